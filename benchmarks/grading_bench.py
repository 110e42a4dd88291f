"""Grading throughput: `grade_batch` (worker pool, hard timeouts, exact checks) against plain
single-process math-verify, on the MATH500 golds against themselves and against perturbed answers.

  python benchmarks/grading_bench.py --data_dir=../shared/data [--workers=2]
"""

import re
import time

from absl import app, flags

from autocode_jax.data import load_dataset
from autocode_jax.grading import GraderPool, grade_batch

_DATA = flags.DEFINE_string("data_dir", "../shared/data", "directory laid out like shared/data")
_WORKERS = flags.DEFINE_integer("workers", 0, "grader processes (0: one per core)")


def perturb(gold: str) -> str:
  """A near-miss: the first digit changed, or '+1' appended when there is none."""
  m = re.search(r"\d", gold)
  if not m:
    return gold + "+1"
  return gold[:m.start()] + str((int(m.group()) + 1) % 10) + gold[m.end():]


def plain_math_verify(golds, preds):
  from math_verify import parse, verify
  return [verify(parse(f"\\boxed{{{g}}}"), parse(f"\\boxed{{{p}}}")) for g, p in zip(golds, preds)]


def main(_):
  golds = [q.gold for q in load_dataset("math500", _DATA.value)]
  with GraderPool(num_workers=_WORKERS.value or None, timeout_s=10) as pool:
    grade_batch(["\\boxed{1}"] * pool.num_workers * 2, ["1"] * pool.num_workers * 2, pool=pool)
    print(f"{len(golds)} MATH500 golds; grade_batch with {pool.num_workers} workers")
    plain_math_verify(golds[:5], golds[:5])  # import and warm in this process too
    for label, preds in (("self", golds), ("perturbed", [perturb(g) for g in golds])):
      start = time.monotonic()
      ours = grade_batch([f"\\boxed{{{p}}}" for p in preds], golds, pool=pool)
      t_ours = time.monotonic() - start
      start = time.monotonic()
      ref = plain_math_verify(golds, preds)
      t_ref = time.monotonic() - start
      agree = sum(a == b for a, b in zip(ours, ref))
      print(f"{label:10} grade_batch {len(golds) / t_ours:8.1f} pairs/s ({sum(ours)} equal) | "
            f"math-verify 1 process {len(golds) / t_ref:8.1f} pairs/s ({sum(ref)} equal) | "
            f"ratio {t_ref / t_ours:.2f}x | verdicts agree on {agree}/{len(golds)}")


if __name__ == "__main__":
  app.run(main)
