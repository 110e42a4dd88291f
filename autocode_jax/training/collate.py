"""Trajectories -> the train step's batch (see step.py): prompt + response token ids, right-padded
to a length bucket, with the masks and behaviour log-probs aligned to the tokens."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _bucket(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def collate(records: Sequence[dict], advantages: Sequence[float], pad_id: int = 0,
            length_multiple: int = 128, logprob_key: str = "logprobs") -> dict[str, np.ndarray]:
  """records: dicts with prompt_ids, token_ids, roles (per response token: prefix/model/tool, or
  the letters p/m/t) and
  `logprob_key` (behaviour log-probs per response token). Returns the batch of step.py."""
  rows = [list(r["prompt_ids"]) + list(r["token_ids"]) for r in records]
  t = _bucket(max(len(x) for x in rows), length_multiple)
  b = len(records)
  batch = {"tokens": np.full((b, t), pad_id, np.int32),
           "attention_mask": np.zeros((b, t), np.float32),
           "policy_mask": np.zeros((b, t), np.float32),
           "prefix_mask": np.zeros((b, t), np.float32),
           "old_logprobs": np.zeros((b, t), np.float32),
           "advantages": np.asarray(advantages, np.float32)}
  for i, (r, row) in enumerate(zip(records, rows)):
    p, n = len(r["prompt_ids"]), len(r["token_ids"])
    if len(r["roles"]) != n or len(r[logprob_key]) != n:
      raise ValueError(f"record {i}: token_ids, roles and {logprob_key} differ in length")
    batch["tokens"][i, :len(row)] = row
    batch["attention_mask"][i, :len(row)] = 1
    roles = r["roles"]  # role names, or one letter per token (p/m/t) as D_train stores them
    roles = np.asarray(list(roles) if isinstance(roles, str) else roles)
    batch["policy_mask"][i, p:p + n] = (roles == "model") | (roles == "m")
    batch["prefix_mask"][i, p:p + n] = (roles == "prefix") | (roles == "p")
    batch["old_logprobs"][i, p:p + n] = r[logprob_key]
  return batch
