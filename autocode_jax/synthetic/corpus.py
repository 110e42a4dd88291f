"""The warm-start corpus of the synthetic task: each problem once under the plain (`auto`)
prompt, answered in plain text or with code at random, so the warm-started model uses code half
the time whatever the problem (the undecided baseline of Fig. 6), and once under the `cot` or
the `code` prompt with the matching solution, so that it follows the mode instructions. A share of
the `auto` code answers open with the code-probe prefix, as a model that sometimes thinks aloud
before coding would."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from autocode_jax.data.prompts import CODE_PREFIX, build_prompt
from autocode_jax.data.records import SftExample
from autocode_jax.synthetic.task import Problem


def warm_start_examples(problems: Sequence[Problem], seed: int = 0,
                        prefix_share: float = 0.25) -> list[SftExample]:
  out = []
  for i, p in enumerate(problems):
    rng = np.random.default_rng([seed, i, 17])
    use_code = bool(rng.random() < 0.5)
    prefix = CODE_PREFIX + "\n" if use_code and rng.random() < prefix_share else ""
    q = p.query()
    out.append(SftExample(q, p.code if use_code else p.plain, "auto", prefix))
    out.append(SftExample(q, p.code, "code") if i % 2 else SftExample(q, p.plain, "cot"))
  return out


def tokenizer_texts(problems: Sequence[Problem]) -> list[str]:
  """The texts the task's tokenizer is trained on: prompts in every mode, both solutions."""
  texts = []
  for p in problems:
    texts += [build_prompt(p.question, m, "vanilla", "plain").text for m in ("auto", "cot", "code")]
    texts += [p.plain, p.code]
  return texts + [CODE_PREFIX]
