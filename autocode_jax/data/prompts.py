"""Every prompt text of the project, and how a query becomes a prompt.

Modes (METHOD.md, Evaluation): `cot` tells the model to reason without code, `code` tells it to
use Python, `auto` is the plain question and leaves the choice to the model. The `code_prefix`
probe (METHOD.md, E-step) appends CODE_PREFIX to the start of the assistant turn; it is returned
separately because the M-step moves it from the prompt into the response.
"""

from __future__ import annotations

import dataclasses

SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
CODE_PREFIX = "Let's first analyze the problem, then consider if python code could help."
MODE_INSTRUCTIONS = {
    "cot": "Solve this problem by reasoning in natural language only; do not write any code.",
    "code": ("Solve this problem with the help of Python: write code in ```python blocks, and "
             "its output will be shown to you in ```output blocks."),
    "auto": "",
}
MODES = tuple(MODE_INSTRUCTIONS)
PROBES = ("vanilla", "code_prefix")


@dataclasses.dataclass(frozen=True)
class Prompt:
  """text: the rendered prompt up to the assistant turn; prefix: the probe's start of the
  assistant turn ("" for vanilla). Generation continues from text + prefix."""
  text: str
  prefix: str

  @property
  def full(self) -> str:
    return self.text + self.prefix


def build_prompt(problem: str, mode: str = "auto", probe: str = "vanilla",
                 template: str = "chat", tokenizer=None) -> Prompt:
  """The prompt of `problem` in a mode, with a probe, under the chat template of `tokenizer`
  (instruct models) or the plain template (base models)."""
  if mode not in MODE_INSTRUCTIONS:
    raise ValueError(f"mode={mode!r}: expected one of {MODES}")
  if probe not in PROBES:
    raise ValueError(f"probe={probe!r}: expected one of {PROBES}")
  user = problem.strip()
  if MODE_INSTRUCTIONS[mode]:
    user += "\n\n" + MODE_INSTRUCTIONS[mode]
  messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
  if template == "plain" and tokenizer is None:
    text = "\n\n".join(m["content"] for m in messages) + "\n\n"
  else:
    if tokenizer is None:
      raise ValueError("build_prompt: template='chat' needs the tokenizer of the model")
    text = tokenizer.render(messages, template)
  return Prompt(text, CODE_PREFIX if probe == "code_prefix" else "")
