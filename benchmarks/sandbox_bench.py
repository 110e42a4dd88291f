"""Sandbox throughput and latency against the naive `subprocess.run([python, -c, code])`.

  python benchmarks/sandbox_bench.py [--workers=2] [--n=400] [--naive_n=20]

Both run the same code with the same parallelism (`--workers` threads for the naive baseline),
side by side in one run. Latency is per execution as the caller sees it.
"""

import concurrent.futures
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

from autocode_jax.interpreter import Sandbox

_WORKERS = flags.DEFINE_integer("workers", 2, "sandbox workers / naive threads")
_N = flags.DEFINE_integer("n", 400, "executions per workload in the sandbox")
_NAIVE_N = flags.DEFINE_integer("naive_n", 20, "executions per workload for the naive baseline")

WORKLOADS = {
    "a print": "print(1+1)",
    "b sympy": "from sympy import *; x = symbols('x'); print(solve(x**2 - 4, x))",
    "c numpy": "import numpy as np; a = np.arange(100.0).reshape(10, 10); print(np.linalg.det(a @ a.T + np.eye(10)))",
}


def _naive(code: str) -> float:
  start = time.monotonic()
  subprocess.run([sys.executable, "-c", code], timeout=60, capture_output=True, check=True)
  return time.monotonic() - start


def _measure(fn, items, workers):
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    start = time.monotonic()
    lat = list(pool.map(fn, items))
    wall = time.monotonic() - start
  lat = np.asarray(lat) * 1e3
  return len(items) / wall, np.percentile(lat, 50), np.percentile(lat, 99)


def main(_):
  w = _WORKERS.value
  print(f"workers={w} sandbox n={_N.value} naive n={_NAIVE_N.value}")
  print(f"{'workload':10} {'engine':8} {'exec/s':>9} {'p50 ms':>9} {'p99 ms':>9}")
  with Sandbox(num_workers=w, timeout_s=30) as sb:
    print(f"isolation: {sb.isolation}")

    def run(code):
      r = sb.run([code])
      assert r.status == "ok", r
      return r.elapsed

    for name, code in WORKLOADS.items():
      _measure(run, [code] * (2 * w), w)  # warm-up
      s = _measure(run, [code] * _N.value, w)
      n = _measure(_naive, [code] * _NAIVE_N.value, w)
      for engine, (rate, p50, p99) in (("sandbox", s), ("naive", n)):
        print(f"{name:10} {engine:8} {rate:9.1f} {p50:9.2f} {p99:9.2f}")
      print(f"{name:10} throughput ratio sandbox/naive: {s[0] / n[0]:.1f}x")


if __name__ == "__main__":
  app.run(main)
