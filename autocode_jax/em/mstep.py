"""The M-step driver (METHOD.md, M-step): behaviour log-probs recomputed in the trainer, the
engine/trainer mismatch, and the train steps over D_train.

The batch of M-step step j is a function of (seed, iteration, j) alone: epoch e = j // S visits
D_train in the order of a permutation seeded by (seed, iteration, e), in mini-batches of
`train_batch_size` trajectories, the last one completed from the start of the permutation. So a
run resumed from a checkpoint in the middle of an M-step replays exactly the batches it missed.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np

from autocode_jax.data.dtrain import TrainRecord
from autocode_jax.em.policy import local_value
from autocode_jax.training.collate import collate, decision_rows


def steps_per_epoch(num_records: int, batch_size: int) -> int:
  return -(-num_records // batch_size)


def batch_indices(num_records: int, batch_size: int, seed: int, iteration: int, j: int):
  """The D_train rows of M-step step j."""
  per = steps_per_epoch(num_records, batch_size)
  epoch, b = divmod(j, per)
  order = np.random.default_rng([seed, iteration, epoch]).permutation(num_records)
  idx = np.arange(b * batch_size, (b + 1) * batch_size) % num_records
  return order[idx]


def mismatch(records: Sequence[TrainRecord], behaviour: Sequence[np.ndarray]) -> dict:
  """Engine vs trainer log-probs over `model` tokens: mean and max |delta log p|."""
  deltas = []
  for r, lp in zip(records, behaviour):
    model = np.asarray(r.model_mask, bool)
    deltas.append(np.abs(np.asarray(r.logprobs, np.float32)[model] - lp[model]))
  d = np.concatenate(deltas) if deltas else np.zeros(0)
  return {"logprob_mismatch_mean": float(d.mean()) if d.size else 0.0,
          "logprob_mismatch_max": float(d.max()) if d.size else 0.0,
          "model_tokens": int(d.size)}


def save_behaviour(path: str, behaviour: Sequence[np.ndarray]) -> None:
  """All records' log-probs as one flat array with offsets, written under a temporary name and
  renamed into place."""
  lengths = np.array([len(x) for x in behaviour], np.int64)
  flat = np.concatenate(behaviour).astype(np.float32) if behaviour else np.zeros(0, np.float32)
  tmp = path + ".tmp.npz"
  np.savez(tmp, flat=flat, lengths=lengths)
  os.replace(tmp, path)


def load_behaviour(path: str) -> list[np.ndarray]:
  with np.load(path) as z:
    flat, lengths = z["flat"], z["lengths"]
  return np.split(flat, np.cumsum(lengths)[:-1]) if len(lengths) else []


def make_batch(records: Sequence[TrainRecord], behaviour: Sequence[np.ndarray], idx, pad_id: int,
               length_multiple: int, decisions: bool = False,
               reference: bool = False) -> dict[str, np.ndarray]:
  """The train batch of D_train rows `idx`; with `decisions`, also one decision row per query
  (group) among them (training.collate.decision_rows); with `reference`, the reference
  log-probs of the KL term: METHOD.md's pi_ref is the policy that sampled D_train (the weights
  at the iteration's start), whose log-probs are the behaviour log-probs themselves."""
  rows = [records[i] for i in idx]
  batch = collate(rows, pad_id, length_multiple, logprobs=[behaviour[i] for i in idx])
  if decisions:
    batch.update(decision_rows(rows, len(rows), pad_id, length_multiple))
  if reference:
    batch["ref_logprobs"] = batch["old_logprobs"]
  return batch


def run_mstep(policy, records: Sequence[TrainRecord], behaviour: Sequence[np.ndarray],
              iteration: int, start_step: int, checkpointer,
              on_step: Callable[[int, dict], None] | None = None) -> int:
  """Train steps policy.step .. end over D_train (end = start_step + epochs x steps per epoch),
  saving a checkpoint every `save_every` steps and at the end; every setting (batch, loss,
  seed) is the policy's run config's. Returns the number of steps."""
  cfg = policy.cfg
  bs = cfg.train_batch_size
  total = cfg.m_step_epochs * steps_per_epoch(len(records), bs) if records else 0
  step_fn = policy.train_step()
  for s in range(policy.step, start_step + total):
    idx = batch_indices(len(records), bs, cfg.seed, iteration, s - start_step)
    batch = make_batch(records, behaviour, idx, policy.pad_id, cfg.length_multiple,
                       cfg.loss.decision_term, reference=bool(cfg.loss.kl_coef))
    policy.state, metrics = step_fn(policy.state, policy.to_global(batch))
    if on_step is not None:
      on_step(s + 1, {k: float(local_value(v)) for k, v in metrics.items()})
    checkpointer.save(s + 1, policy.state, force=s + 1 == start_step + total)
  checkpointer.wait()
  return total
