"""The sandbox server: one warm interpreter that forks a confined child per execution.

Started by `Sandbox` as `python -m autocode_jax.interpreter.server` with a scrubbed environment;
it never imports JAX. It preloads the math stack once, then answers length-prefixed JSON requests
on stdin/stdout, one at a time. Each execution runs in a fresh fork (made ahead of the request,
while the pool is idle: `Spare`) that drops privileges, takes its limits and a fresh working
directory; whatever it spawns is killed and reaped before the answer goes back (the server is a
child subreaper, so escaped descendants come back to it).
"""

from __future__ import annotations

import ast
import json
import os
import pwd
import resource
import select
import shutil
import signal
import sys
import tempfile
import time
import traceback

from autocode_jax import ipc
from autocode_jax.interpreter import confine

PRELOAD = ("math", "cmath", "fractions", "decimal", "itertools", "functools", "collections",
           "statistics", "random", "re", "string", "heapq", "bisect", "operator", "numpy", "sympy")


# -- the child: runs the cells ----------------------------------------------------------------

def _last_line(exc: BaseException) -> str:
  return traceback.format_exception_only(type(exc), exc)[-1].strip()


def run_cells(cells: list[str]) -> tuple[str, str]:
  """Runs cells in one namespace; returns (status, error line). Earlier cells are replayed with
  their output suppressed at the file-descriptor level; the last cell's bare final expression is
  printed, as in a notebook."""
  ns = {"__name__": "__main__", "__builtins__": __builtins__}
  devnull = os.open(os.devnull, os.O_WRONLY)
  saved = os.dup(1), os.dup(2)
  for cell in cells[:-1]:
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    try:
      exec(compile(cell, "<cell>", "exec"), ns)
    except BaseException:  # it failed the first time too, and the model saw that
      pass
    finally:
      sys.stdout.flush()
      sys.stderr.flush()
      os.dup2(saved[0], 1)
      os.dup2(saved[1], 2)
  os.close(devnull)
  try:
    tree = ast.parse(cells[-1], "<cell>")
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, "<cell>", "exec"), ns)
    if last is not None:
      value = eval(compile(ast.Expression(last.value), "<cell>", "eval"), ns)
      if value is not None:
        print(repr(value))
    return "ok", ""
  except SystemExit as e:
    return ("ok", "") if e.code in (None, 0) else ("error", _last_line(e))
  except MemoryError as e:
    return "memory", _last_line(e) if str(e) else "MemoryError: out of memory"
  except BaseException as e:
    return "error", _last_line(e)


def child(req: dict, workdir: str, out_w: int, res_w: int, setup: dict) -> None:
  """In the forked child: confine, run, report; never returns."""
  status, line = "sandbox_failure", ""
  try:
    os.setsid()
    null_in = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_in, 0)
    os.dup2(out_w, 1)
    os.dup2(out_w, 2)
    os.closerange(3, res_w)
    os.closerange(res_w + 1, 65536)
    os.chdir(workdir)
    mb = 2**20
    resource.setrlimit(resource.RLIMIT_AS, (setup["vm_bytes"] + req["memory_mb"] * mb,) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (req["max_file_mb"] * mb,) * 2)
    resource.setrlimit(resource.RLIMIT_NPROC, (setup["nproc_base"] + req["max_processes"],) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    cpu = int(req["timeout_s"]) + 2
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    if setup["uid"] is not None:
      os.setgroups([])
      os.setgid(setup["gid"])
      os.setuid(setup["uid"])
    # After setuid: a credential change clears the parent-death signal.
    confine.prctl(confine.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != setup["server_pid"]:
      os._exit(1)
    if setup["landlock_abi"]:
      confine.landlock_restrict(workdir, setup["landlock_abi"])
    if setup["network"] == "seccomp":
      confine.seccomp_deny_sockets()
    os.environ.clear()
    os.environ.update({"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir,
                       "LANG": "C.UTF-8", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
    sys.stdin = open(0, closefd=False)
    me = os.getpid()
    status, line = run_cells(req["cells"])
    if os.getpid() != me:  # a process the code forked fell out of its cells: not the reporter
      os._exit(0)
  except BaseException as e:  # noqa: BLE001 - anything escaping here is the sandbox's failure
    status, line = "sandbox_failure", f"SandboxError: {_last_line(e)}"
  try:
    sys.stdout.flush()
    sys.stderr.flush()
  except BaseException:
    pass
  try:
    os.write(res_w, json.dumps({"status": status, "line": line}).encode())
  finally:
    os._exit(0)


# -- the server: one execution ----------------------------------------------------------------

def _children() -> list[int]:
  pid = os.getpid()
  try:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
      return [int(p) for p in f.read().split()]
  except OSError:
    return []


def reap_all() -> None:
  """Kills and reaps every remaining descendant: orphans are reparented here (subreaper), so
  repeating until no child is left catches grandchildren that escaped their process group."""
  while kids := _children():
    for k in kids:
      try:
        os.kill(k, signal.SIGKILL)
      except ProcessLookupError:
        pass
    for k in kids:
      try:
        os.waitpid(k, 0)
      except ChildProcessError:
        pass


def _shown(out: bytes, total: int, limit: int) -> str:
  """The first `limit` characters of the output, with a marker when anything was cut."""
  text = out.decode("utf-8", errors="replace")
  if len(text) <= limit and total == len(out):
    return text
  return text[:limit] + f"\n...[output truncated: {total} bytes in all]"


class Spare:
  """A child forked ahead of its request, waiting on a pipe: the fork (whose cost grows with
  the preloaded heap) happens while the pool is idle, not while a caller waits."""

  def __init__(self, setup: dict):
    self.workdir = tempfile.mkdtemp(prefix="exec-", dir=setup["root"])
    if setup["uid"] is not None:
      os.chown(self.workdir, setup["uid"], setup["gid"])
    req_r, self.req_w = os.pipe()
    self.out_r, out_w = os.pipe()
    self.res_r, res_w = os.pipe()
    self.pid = os.fork()
    if self.pid == 0:
      for fd in (self.req_w, self.out_r, self.res_r):
        os.close(fd)
      data = bytearray()
      while chunk := os.read(req_r, 65536):
        data.extend(chunk)
      if not data:  # the server closed the pipe: shutting down
        os._exit(0)
      child(json.loads(data), self.workdir, out_w, res_w, setup)
    for fd in (req_r, out_w, res_w):
      os.close(fd)

  def start(self, req: dict) -> None:
    os.write(self.req_w, json.dumps(req).encode())  # small: fits the pipe buffer
    os.close(self.req_w)

  def discard(self) -> None:
    os.close(self.req_w)  # it reads EOF and exits
    os.waitpid(self.pid, 0)
    for fd in (self.out_r, self.res_r):
      os.close(fd)
    shutil.rmtree(self.workdir, ignore_errors=True)


def execute(req: dict, setup: dict) -> dict:
  timeout, cap = req["timeout_s"], req["output_limit_bytes"]
  keep = 4 * req["max_output_chars"] + 64  # bytes kept: enough for the chars shown
  spare = setup.pop("spare", None) or Spare(setup)
  spare.start(req)
  pid, workdir, out_r, res_r = spare.pid, spare.workdir, spare.out_r, spare.res_r
  for fd in (out_r, res_r):
    os.set_blocking(fd, False)
  pidfd = os.pidfd_open(pid)
  poller = select.poll()
  for fd in (out_r, res_r, pidfd):
    poller.register(fd, select.POLLIN)
  out, total, res = bytearray(), 0, bytearray()
  killed = None
  deadline = time.monotonic() + timeout

  def drain(fd):
    nonlocal total
    while True:
      try:
        data = os.read(fd, 65536)
      except BlockingIOError:
        return True
      if not data:
        return False
      if fd == res_r:
        res.extend(data[:4096 - len(res)])
      else:
        total += len(data)
        if len(out) < keep:
          out.extend(data[:keep - len(out)])

  exited = False
  while not exited and killed is None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
      killed = "timeout"
      break
    for fd, _ in poller.poll(remaining * 1000):
      if fd == pidfd:
        exited = True
      elif not drain(fd):
        poller.unregister(fd)
      if total > cap:
        killed = "output_limit"
  if killed:
    for target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
      try:
        target()
      except ProcessLookupError:
        pass
  _, wstatus = os.waitpid(pid, 0)
  drain(out_r)
  drain(res_r)
  try:
    os.killpg(pid, signal.SIGKILL)  # anything the code left running in its group
  except ProcessLookupError:
    pass
  reap_all()
  for fd in (out_r, res_r, pidfd):
    os.close(fd)
  shutil.rmtree(workdir, ignore_errors=True)

  text = _shown(bytes(out), total, req["max_output_chars"])
  status, line = _classify(killed, wstatus, bytes(res), req)
  if line:
    text = (text.rstrip("\n") + "\n" + line) if text.strip() else line
  return {"status": status, "output": text}


def _classify(killed, wstatus, res: bytes, req) -> tuple[str, str]:
  if killed == "timeout":
    return "timeout", f"TimeoutError: execution exceeded {req['timeout_s']:g} s"
  if killed == "output_limit":
    return "output_limit", f"OutputLimitError: output exceeded {req['output_limit_bytes']} bytes"
  if res:
    try:
      r = json.loads(res)
      return r["status"], r["line"]
    except (ValueError, KeyError):
      return "error", "Error: the process wrote a malformed result"
  if os.WIFSIGNALED(wstatus):
    sig = os.WTERMSIG(wstatus)
    if sig == signal.SIGKILL:
      return "memory", "MemoryError: the process was killed (out of memory)"
    if sig == signal.SIGXFSZ:
      return "error", "OSError: file size limit exceeded"
    if sig == signal.SIGXCPU:
      return "timeout", f"TimeoutError: CPU time exceeded {req['timeout_s']:g} s"
    return "error", f"Error: the process died with {signal.Signals(sig).name}"
  code = os.WEXITSTATUS(wstatus)
  return ("ok", "") if code == 0 else ("error", f"SystemExit: {code}")


# -- start-up ---------------------------------------------------------------------------------

def _vm_bytes() -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmSize:"):
        return int(line.split()[1]) * 1024
  return 0


def _nproc_of(uid: int) -> int:
  n = 0
  for p in os.listdir("/proc"):
    if p.isdigit():
      try:
        if os.stat(f"/proc/{p}").st_uid == uid:
          n += 1
      except OSError:
        pass
  return n


def setup_server(network: str, user: str) -> dict:
  """Preloads, then picks and applies the isolation modes; returns what the children need."""
  for name in PRELOAD:
    __import__(name)
  import sympy  # warm the lazily imported parts solve() needs
  sympy.solve(sympy.Symbol("x") ** 2 - 4, sympy.Symbol("x"))
  import gc
  gc.freeze()  # the preloaded heap: children's collections skip it, so fewer copy-on-write faults

  root_user = os.geteuid() == 0
  if user == "auto":
    user = "nobody" if root_user else "none"
  uid = gid = None
  if user != "none":
    if not root_user:
      raise RuntimeError(f"user={user!r} needs root to switch users")
    pw = pwd.getpwnam(user)
    uid, gid = pw.pw_uid, pw.pw_gid

  if network == "auto":
    network = "namespace" if root_user and confine.unshare_network() else "seccomp"
  elif network == "namespace":
    if not confine.unshare_network():
      raise RuntimeError("network='namespace' but unshare(CLONE_NEWNET) failed")
  if network == "seccomp" and not confine.seccomp_supported():
    raise RuntimeError("network='seccomp' is not supported on this architecture")

  abi = confine.landlock_abi()
  confine.prctl(confine.PR_SET_CHILD_SUBREAPER, 1)
  root = tempfile.mkdtemp(prefix="autocode-sandbox-")
  os.chmod(root, 0o711)
  nproc_uid = uid if uid is not None else os.getuid()
  return {
      "uid": uid, "gid": gid, "network": network, "landlock_abi": abi, "root": root,
      "server_pid": os.getpid(), "vm_bytes": _vm_bytes(),
      # RLIMIT_NPROC counts all of the uid's processes: leave room for those already running.
      "nproc_base": _nproc_of(nproc_uid) if uid is None else 0,
      "isolation": {
          "network": network,
          "filesystem": "+".join(([f"user:{user}"] if uid is not None else []) +
                                 (["landlock"] if abi else [])) or "none",
          "landlock_abi": abi,
      },
  }


def main() -> None:
  confine.prctl(confine.PR_SET_PDEATHSIG, signal.SIGKILL)  # die with the trainer
  network, user = sys.argv[1], sys.argv[2]
  stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
  # Children must not inherit the protocol pipes.
  os.set_inheritable(stdin.fileno(), False)
  os.set_inheritable(stdout.fileno(), False)
  try:
    setup = setup_server(network, user)
  except BaseException as e:
    ipc.send(stdout, {"ready": False, "error": _last_line(e)})
    return
  ipc.send(stdout, {"ready": True, "isolation": setup["isolation"], "root": setup["root"]})
  try:
    setup["spare"] = Spare(setup)
    while (req := ipc.recv(stdin)) is not None:
      answer = execute(req, setup)
      setup["spare"] = Spare(setup)  # before answering, so the process count is steady
      ipc.send(stdout, answer)
  finally:
    if "spare" in setup:
      setup["spare"].discard()
    shutil.rmtree(setup["root"], ignore_errors=True)


if __name__ == "__main__":
  main()
