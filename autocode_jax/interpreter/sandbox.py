"""`Sandbox`: a pool of sandbox servers that runs model-written Python safely and fast.

Each worker is a `server.py` process (started fresh, never forked from the trainer, never
importing JAX) that forks one confined child per execution. The pool is safe to use from many
threads (`run`), runs batches in parallel (`run_batch`), without waiting (`submit`, a future)
and from asyncio (`arun`). A worker that dies or stops answering is killed and replaced; the
caller always gets an `ExecResult`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import os
import queue
import shutil
import threading
import time
import weakref

from autocode_jax import ipc

STATUSES = ("ok", "error", "timeout", "memory", "output_limit", "sandbox_failure")
# Passed through to the server: OpenBLAS misbehaves on some CPUs without these.
_PASS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
_STARTUP_S = 120.0  # preloading sympy on a loaded 2-core machine can take a while
_GRACE_S = 10.0     # beyond the execution timeout, before a silent worker is declared hung


@dataclasses.dataclass(frozen=True)
class ExecResult:
  """What one execution produced.

  status: one of STATUSES.
  output: what the model is shown: stdout/stderr (truncated to max_output_chars with a marker),
    then, unless status is ok, one line saying what went wrong (an exception's last traceback
    line, a timeout, a memory kill, ...). Never empty unless the code printed nothing and succeeded.
  elapsed: wall-clock seconds, request to answer, as seen by the caller.
  """
  status: str
  output: str
  elapsed: float


class SandboxError(RuntimeError):
  """The sandbox could not start, or was used after close()."""


class _Worker(ipc.Helper):
  """One sandbox server process."""

  def __init__(self, network: str, user: str):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "OPENBLAS_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.update({k: os.environ[k] for k in _PASS_ENV if k in os.environ})
    super().__init__("autocode_jax.interpreter.server", (network, user), env)

  def wait_ready(self) -> dict:
    try:
      return super().wait_ready(_STARTUP_S)
    except RuntimeError as e:
      raise SandboxError(f"sandbox server failed to start: {e}") from None

  def kill(self) -> None:
    """Kills the server and whatever it was running, and waits (briefly) until they are gone:
    its children die with it (parent-death signal) and are reaped by init, not by us."""
    tree = _descendants(self.proc.pid)
    for pid in tree:
      try:
        os.kill(pid, 9)
      except (ProcessLookupError, PermissionError):
        pass
    super().kill()
    deadline = time.monotonic() + 5.0
    while any(os.path.exists(f"/proc/{p}") for p in tree) and time.monotonic() < deadline:
      time.sleep(0.01)
    if self.hello:  # a killed server could not remove its working directories
      shutil.rmtree(self.hello["root"], ignore_errors=True)


def _descendants(pid: int) -> list[int]:
  out, frontier = [], [pid]
  while frontier:
    p = frontier.pop()
    try:
      with open(f"/proc/{p}/task/{p}/children") as f:
        kids = [int(k) for k in f.read().split()]
    except OSError:
      kids = []
    out.extend(kids)
    frontier.extend(kids)
  return out


class Sandbox:
  """A pool of `num_workers` sandbox servers.

  Args:
    num_workers: executions that run at once.
    timeout_s: wall-clock limit of one execution; the whole process group is killed at it.
    memory_mb: address space the code may allocate beyond the preloaded interpreter.
    max_output_chars: output shown in `ExecResult.output`; the rest is cut with a marker.
    output_limit_bytes: printing more than this kills the execution (status `output_limit`).
    max_processes: processes the code may have at once (RLIMIT_NPROC).
    max_file_mb: largest file it may write (RLIMIT_FSIZE).
    network: "auto" (a network namespace when root, else a seccomp filter refusing non-Unix
      sockets), "namespace" or "seccomp".
    user: "auto" (drop to `nobody` when root, else stay), a user name, or "none".
  `isolation` says which modes are active (Landlock is added wherever the kernel has it).
  """

  def __init__(self, num_workers: int = 2, timeout_s: float = 5.0, memory_mb: int = 1024,
               max_output_chars: int = 512, output_limit_bytes: int = 1 << 20,
               max_processes: int = 32, max_file_mb: int = 16, network: str = "auto",
               user: str = "auto"):
    for name, value in (("num_workers", num_workers), ("timeout_s", timeout_s),
                        ("memory_mb", memory_mb), ("max_output_chars", max_output_chars),
                        ("output_limit_bytes", output_limit_bytes),
                        ("max_processes", max_processes), ("max_file_mb", max_file_mb)):
      if not value > 0:
        raise ValueError(f"Sandbox({name}={value!r}): must be positive")
    if network not in ("auto", "namespace", "seccomp"):
      raise ValueError(f"Sandbox(network={network!r}): expected auto, namespace or seccomp")
    self.num_workers = num_workers
    self.timeout_s = float(timeout_s)
    self._network, self._user = network, user
    self._limits = {"timeout_s": float(timeout_s), "memory_mb": int(memory_mb),
                    "max_output_chars": int(max_output_chars),
                    "output_limit_bytes": int(output_limit_bytes),
                    "max_processes": int(max_processes), "max_file_mb": int(max_file_mb)}
    self._idle: queue.Queue[_Worker] = queue.Queue()
    self._all: list[_Worker] = []
    self._lock = threading.Lock()
    self._closed = False
    self._finalizer = weakref.finalize(self, ipc.close_all, self._all)
    self.restarts = 0
    workers = [_Worker(network, user) for _ in range(num_workers)]
    self._all.extend(workers)
    try:
      for w in workers:
        self.isolation = w.wait_ready()["isolation"]
    except BaseException:
      self.close()
      raise
    for w in workers:
      self._idle.put(w)
    self._executor = concurrent.futures.ThreadPoolExecutor(num_workers, "sandbox")

  def _replace(self, dead: _Worker) -> _Worker | None:
    dead.kill()
    with self._lock:
      if dead in self._all:
        self._all.remove(dead)
      if self._closed:
        return None
      self.restarts += 1
      fresh = _Worker(self._network, self._user)
      self._all.append(fresh)
    try:
      fresh.wait_ready()
    except SandboxError:
      with self._lock:
        self._all.remove(fresh)
      return None
    return fresh

  def run(self, cells: list[str]) -> ExecResult:
    """Executes the cells of one trajectory (all but the last replayed silently)."""
    if isinstance(cells, str) or not cells or not all(isinstance(c, str) for c in cells):
      raise TypeError("Sandbox.run expects a non-empty list of code strings")
    if self._closed:
      raise SandboxError("Sandbox.run after close()")
    start = time.monotonic()
    worker = self._idle.get()
    answer = None
    try:
      answer = worker.request({"cells": list(cells), **self._limits},
                              time.monotonic() + self.timeout_s + _GRACE_S)
    finally:
      if answer is None:
        worker = self._replace(worker)
      if worker is not None:
        if self._closed:
          worker.close()
        else:
          self._idle.put(worker)
    elapsed = time.monotonic() - start
    if answer is None:
      return ExecResult("sandbox_failure", "SandboxError: the sandbox worker died or hung; "
                        "it was replaced", elapsed)
    return ExecResult(answer["status"], answer["output"], elapsed)

  def run_batch(self, batch: list[list[str]]) -> list[ExecResult]:
    """Runs many cell lists in parallel over the pool; results in input order."""
    return list(self._executor.map(self.run, batch))

  def submit(self, cells: list[str]) -> concurrent.futures.Future:
    """`run` without waiting: a future of its ExecResult (num_workers run at once, the rest
    queue), so a caller can go on while the cells run."""
    return self._executor.submit(self.run, cells)

  async def arun(self, cells: list[str]) -> ExecResult:
    """`run` for asyncio: awaits without blocking the event loop."""
    return await asyncio.get_running_loop().run_in_executor(self._executor, self.run, cells)

  def worker_pids(self) -> list[int]:
    with self._lock:
      return [w.proc.pid for w in self._all]

  def close(self) -> None:
    """Stops every worker; executions in flight end with their worker. Idempotent."""
    self._closed = True
    if hasattr(self, "_executor"):
      self._executor.shutdown(wait=False)
    self._finalizer()  # ipc.close_all over the workers, at most once

  def __enter__(self) -> "Sandbox":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
