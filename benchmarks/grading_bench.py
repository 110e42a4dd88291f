"""The grader against plain math-verify on the generated agreement suite (grading/agreement.py):
agreement with the construction's verdicts per variant kind, side by side, every pair where the
two disagree, grader failures, throughput (both run in the same worker pool), and the time our
grader takes per answer (p50 / p95 / max, the round trip to its worker process included, each
worker busy with one answer at a time) and how many answers hit the time limit.

  python benchmarks/grading_bench.py --data_dir=../shared/data [--datasets=math500,gsm8k]
      [--workers=2] [--timeout_s=5] [--out=grading_bench.json]
"""

import collections
import json
import time

import numpy as np

from absl import app, flags

from autocode_jax.data import load_dataset
from autocode_jax.grading import GraderPool, agreement
from autocode_jax.grading.grader import grade_results

_DATA = flags.DEFINE_string("data_dir", "../shared/data", "directory laid out like shared/data")
_DATASETS = flags.DEFINE_list("datasets", ["math500", "gsm8k", "gaokao2023en", "olympiadbench",
                                           "aime24", "amc23", "math_train"],
                              "datasets whose golds the suite is built from")
_TIMEOUT = flags.DEFINE_float("timeout_s", 5.0, "seconds per answer (the grader's default)")
_WORKERS = flags.DEFINE_integer("workers", 0, "grader processes (0: one per core)")
_OUT = flags.DEFINE_string("out", "", "also write every disagreement and the totals as JSON")


def _pct(n: int, d: int) -> str:
  return f"{100 * n / d:6.2f}%" if d else "     -"


def main(_):
  golds = {n: [q.gold for q in load_dataset(n, _DATA.value)] for n in _DATASETS.value}
  suite = agreement.build_suite(golds)
  with GraderPool(num_workers=_WORKERS.value or None, timeout_s=_TIMEOUT.value) as pool:
    grade_results(["\\boxed{1}"] * pool.num_workers * 2, ["1"] * pool.num_workers * 2, pool=pool)
    t0 = time.monotonic()
    scored = agreement.score(suite, pool, timeout_s=_TIMEOUT.value)
    seconds = time.monotonic() - t0
    workers = pool.num_workers
  print(f"{len(suite)} pairs from {sum(map(len, golds.values()))} golds of "
        f"{', '.join(golds)}; {workers} grader processes; {seconds:.1f} s for both graders")

  by_kind = collections.defaultdict(lambda: [0, 0, 0])
  for s in scored:
    row = by_kind[s.pair.kind]
    row[0] += 1
    row[1] += s.ours == s.pair.expected
    row[2] += s.plain == s.pair.expected
  print(f"\n{'variant':28} {'pairs':>6} {'ours right':>11} {'math-verify right':>18}")
  for kind in sorted(by_kind):
    n, ours, plain = by_kind[kind]
    print(f"{kind:28} {n:6d} {_pct(ours, n):>11} {_pct(plain, n):>18}")
  n = len(scored)
  ours = sum(s.ours == s.pair.expected for s in scored)
  plain = sum(s.plain == s.pair.expected for s in scored)
  print(f"{'all':28} {n:6d} {_pct(ours, n):>11} {_pct(plain, n):>18}")
  worse = [s for s in scored if s.plain == s.pair.expected and s.ours != s.pair.expected]
  fps = [s for s in scored if not s.pair.expected and s.plain]
  print(f"\nours wrong where math-verify is right: {len(worse)}; math-verify false positives "
        f"{len(fps)}, ours right on {sum(not s.ours for s in fps)}")
  failures = collections.Counter(
      [f"ours {s.ours_failure}" for s in scored if s.ours_failure] +
      [f"math-verify {s.plain_failure}" for s in scored if s.plain_failure])
  print(f"grader failures: {dict(failures) or 'none'}")
  ms = 1000 * np.array([s.ours_seconds for s in scored])
  timeouts = sum(s.ours_failure == "timeout" for s in scored)
  print(f"our grader per answer: p50 {np.percentile(ms, 50):.1f} ms, p95 "
        f"{np.percentile(ms, 95):.1f} ms, max {ms.max():.0f} ms; {timeouts} timeouts at "
        f"{_TIMEOUT.value:g} s")
  slowest = sorted(scored, key=lambda s: -s.ours_seconds)[:5]
  print("slowest: " + "; ".join(f"{1000 * s.ours_seconds:.0f} ms {s.pair.kind} "
                                f"{agreement.answer_of(s.pair)!r}" for s in slowest))

  disagree = [s for s in scored if s.ours != s.plain]
  print(f"\n{len(disagree)} pairs where the graders disagree (expected | ours | math-verify | "
        f"kind | gold | answer):")
  for s in disagree:
    answer = agreement.answer_of(s.pair)
    print(f"  {'=' if s.pair.expected else '!='} | {int(s.ours)} | {int(s.plain)} | "
          f"{s.pair.kind} | {s.pair.gold!r} | {answer!r}")
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump({"pairs": n, "ours_right": ours, "math_verify_right": plain,
                 "ours_ms": {"p50": float(np.percentile(ms, 50)),
                             "p95": float(np.percentile(ms, 95)), "max": float(ms.max())},
                 "ours_timeouts": timeouts,
                 "ours_wrong_where_math_verify_right": len(worse),
                 "by_kind": {k: dict(zip(("pairs", "ours_right", "math_verify_right"), v))
                             for k, v in sorted(by_kind.items())},
                 "disagreements": [{"dataset": s.pair.dataset, "index": s.pair.index,
                                    "kind": s.pair.kind, "gold": s.pair.gold,
                                    "response": s.pair.response, "expected": s.pair.expected,
                                    "ours": s.ours, "math_verify": s.plain}
                                   for s in disagree]}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
