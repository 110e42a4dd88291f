"""Trajectories -> the train step's batch (see step.py): prompt + response token ids, right-padded
to a length bucket, with the masks and behaviour log-probs aligned to the tokens; and the
decision rows of the decision term, one per query of the batch."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from autocode_jax.data.dtrain import TrainRecord


def _bucket(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def collate(records: Sequence[TrainRecord], pad_id: int = 0, length_multiple: int = 128,
            logprobs: Sequence[np.ndarray] | None = None) -> dict[str, np.ndarray]:
  """The batch of step.py from D_train records: prompt + response tokens, the policy mask over
  the `m` tokens (`p` and `t` tokens are context only), each record's advantage, and as
  old_logprobs `logprobs` ([R_i] per record: the behaviour log-probs) or else the records' own
  engine log-probs."""
  if logprobs is None:
    logprobs = [r.logprobs for r in records]
  rows = [list(r.prompt_ids) + list(r.token_ids) for r in records]
  t = _bucket(max(len(x) for x in rows), length_multiple)
  b = len(records)
  batch = {"tokens": np.full((b, t), pad_id, np.int32),
           "attention_mask": np.zeros((b, t), np.float32),
           "policy_mask": np.zeros((b, t), np.float32),
           "old_logprobs": np.zeros((b, t), np.float32),
           "advantages": np.asarray([r.advantage for r in records], np.float32)}
  for i, (r, row, lp) in enumerate(zip(records, rows, logprobs)):
    p, n = len(r.prompt_ids), len(r.token_ids)
    if len(lp) != n:
      raise ValueError(f"record {i}: {n} token_ids but {len(lp)} log-probs")
    batch["tokens"][i, :len(row)] = row
    batch["attention_mask"][i, :len(row)] = 1
    batch["policy_mask"][i, p:p + n] = r.model_mask
    batch["old_logprobs"][i, p:p + n] = lp
  return batch


def decision_rows(records: Sequence[TrainRecord], num_rows: int, pad_id: int = 0,
                  length_multiple: int = 128) -> dict[str, np.ndarray]:
  """The decision rows of a batch (METHOD.md, M-step, Decision term): one per distinct `group`
  among `records`, in order of first appearance, each the group's decision context
  (`prompt_ids`: the plain prompt, or a branch's (x, y<t)) followed by its `decision_ids` (the
  probe prefix P, or the fence that opened a branch's code block), with s*(c=1) =
  `s_star[1]`. Padded with empty rows to `num_rows` (the batch's row count, so that the rows
  split into micro-batches with the trajectories). Records of one group must agree on all
  three fields."""
  first: dict = {}
  for i, r in enumerate(records):
    key = r.group
    if key not in first:
      first[key] = r
    elif (first[key].prompt_ids, first[key].decision_ids, first[key].s_star) != (
        r.prompt_ids, r.decision_ids, r.s_star):
      raise ValueError(f"record {i} of group {key!r}: its decision context, prefix or s* "
                       "differs from the group's first record")
  if len(first) > num_rows:
    raise ValueError(f"{len(first)} decision rows do not fit in {num_rows}")
  rows = [(list(r.prompt_ids), list(r.decision_ids or ()), float(r.s_star[1]))
          for r in first.values()]
  for (ctx, dec, _), key in zip(rows, first):
    if not dec:
      raise ValueError(f"group {key!r}: empty decision_ids")
  t = _bucket(max([len(c) + len(d) for c, d, _ in rows] or [2]), length_multiple)
  out = {"decision_tokens": np.full((num_rows, t), pad_id, np.int32),
         "decision_attention": np.zeros((num_rows, t), np.float32),
         "decision_mask": np.zeros((num_rows, t), np.float32),
         "decision_s1": np.zeros((num_rows,), np.float32)}
  for j, (ctx, dec, s1) in enumerate(rows):
    p, n = len(ctx), len(dec)
    out["decision_tokens"][j, :p + n] = ctx + dec
    out["decision_attention"][j, :p + n] = 1
    out["decision_mask"][j, p:p + n] = 1
    out["decision_s1"][j] = s1
  return out
