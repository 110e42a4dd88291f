"""A pool of grader processes with a hard per-call time limit.

math-verify times out with `signal.alarm` (main thread only) and sympy can hang, recurse or
exhaust memory on inputs such as 10^{10^{10}} or a 10,000-deep nesting; so every call runs in a
worker process (`worker.py`) that is killed and replaced when it overruns, crashes or dies.
"""

from __future__ import annotations

import concurrent.futures
import os
import queue
import threading
import time
import weakref

from autocode_jax import ipc

FUNCS = ("equivalent", "parses", "plain_math_verify")


class _Worker(ipc.Helper):
  def __init__(self, memory_mb: int):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    super().__init__("autocode_jax.grading.worker", (str(memory_mb),), env)
    self.ready = False


class GraderPool:
  """`num_workers` grader processes. `call` / `map` never take longer than the timeout per item
  (plus a worker restart after a kill); a timeout or a crash answers (False, reason)."""

  def __init__(self, num_workers: int | None = None, timeout_s: float = 5.0,
               memory_mb: int = 4096, startup_s: float = 120.0):
    if timeout_s <= 0:
      raise ValueError(f"GraderPool(timeout_s={timeout_s!r}): must be positive")
    self.num_workers = num_workers or os.cpu_count() or 1
    self.timeout_s, self._memory_mb, self._startup_s = timeout_s, memory_mb, startup_s
    self._idle: queue.Queue[_Worker] = queue.Queue()
    self._workers: list[_Worker] = []
    self._lock = threading.Lock()
    for _ in range(self.num_workers):
      w = _Worker(memory_mb)
      self._workers.append(w)
      self._idle.put(w)
    self._finalizer = weakref.finalize(self, ipc.close_all, self._workers)
    self._executor = concurrent.futures.ThreadPoolExecutor(self.num_workers, "grader")
    self.kills = 0

  def _ready(self, w: _Worker) -> None:
    if not w.ready:
      w.wait_ready(self._startup_s)  # RuntimeError with the worker's stderr if it cannot start
      w.ready = True

  def call(self, fn: str, *args, timeout_s: float | None = None) -> tuple[bool, object]:
    """(True, equivalence.<fn>(*args)) or (False, why), why being the error, 'timeout' or 'died'."""
    if fn not in FUNCS:
      raise ValueError(f"unknown grader function {fn!r}; known: {FUNCS}")
    w = self._idle.get()
    try:
      self._ready(w)
      answer = w.request({"fn": fn, "args": list(args)},
                         time.monotonic() + (timeout_s or self.timeout_s))
    except BaseException:
      self._idle.put(self._replace(w))
      raise
    if answer is None:
      died = w.proc.poll() is not None
      w = self._replace(w)
      self._idle.put(w)
      return False, "died" if died else "timeout"
    self._idle.put(w)
    return bool(answer["ok"]), answer["value"]

  def _replace(self, w: _Worker) -> _Worker:
    w.kill()
    fresh = _Worker(self._memory_mb)
    with self._lock:
      self.kills += 1
      self._workers.remove(w)
      self._workers.append(fresh)
    return fresh

  def map(self, fn: str, arg_tuples: list[tuple], timeout_s: float | None = None,
          seconds: bool = False) -> list:
    """`call` over many argument tuples, in parallel over the workers (one thread each, so no
    call waits for a worker); results in order. seconds: each result is (ok, value, the call's
    wall time), the round trip to the worker included."""
    def timed(args):
      t0 = time.monotonic()
      return *self.call(fn, *args, timeout_s=timeout_s), time.monotonic() - t0
    if seconds:
      return list(self._executor.map(timed, arg_tuples))
    return list(self._executor.map(lambda a: self.call(fn, *a, timeout_s=timeout_s), arg_tuples))

  def close(self) -> None:
    self._executor.shutdown(wait=True)
    self._finalizer()

  def __enter__(self) -> "GraderPool":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
