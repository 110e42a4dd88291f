"""Written solutions as D_train records: the `sft` baseline's data, and the demo's warm start."""

from __future__ import annotations

import re
from typing import Sequence

from autocode_jax.data.dtrain import TrainRecord
from autocode_jax.data.prompts import build_prompt
from autocode_jax.data.records import SftExample

_OUTPUT_BLOCK = re.compile(r"```output\n.*?```\n?", re.DOTALL)


def sft_records(tokenizer, template: str, examples: Sequence[SftExample], iteration: int,
                end_id: int) -> list[TrainRecord]:
  """Each example's response under its mode's prompt (`template`: chat | plain), ended by
  `end_id` (rollout.session.end_id); an opening prefix is tokenised on its own, as the
  code_prefix probe's is, and a newline separates it from the response; a given prefix is
  context (role p, out of the loss, as in the probe's rollouts), any other is model text.
  ```output blocks in a response are tool tokens (tokenised on their own, out of the loss), the
  rest is model text."""
  out = []
  for ex in examples:
    q = ex.query
    if not ex.response:
      raise ValueError(f"sft: query {q.id} of {q.source} has no solution to train on")
    prompt = build_prompt(q.problem, ex.mode, "vanilla", template, tokenizer)
    ids = tokenizer.encode(ex.prefix) if ex.prefix else []  # as the probe tokenises it
    roles, pos = ["p" if ex.prefix_given else "m"] * len(ids), 0
    text = ("\n" if ex.prefix else "") + ex.response.strip()
    for m in _OUTPUT_BLOCK.finditer(text):
      for piece, role in ((text[pos:m.start()], "m"), (m.group(0), "t")):
        toks = tokenizer.encode(piece) if piece else []
        ids += toks
        roles += [role] * len(toks)
      pos = m.end()
    toks = tokenizer.encode(text[pos:]) + [end_id]
    ids += toks
    roles += ["m"] * len(toks)
    out.append(TrainRecord(query_id=q.id, probe="sft", mode=ex.mode, iteration=iteration,
                           label=int("t" in roles), reward=1.0,
                           prompt_ids=tokenizer.encode(prompt.text), token_ids=ids,
                           roles="".join(roles), logprobs=[0.0] * len(ids), advantage=0.0,
                           group=q.id, tool_statuses=(), stop_reason="eos",
                           text=ex.prefix + text))
  return out
