"""A run directory belongs to one run at a time.

`hold(run_dir, index)` takes a POSIX record lock (fcntl) on run_dir/lock.p<index> before the
run writes anything, and keeps it until the process exits. The kernel drops such a lock with
the process that holds it, however it ends (SIGKILL included), and a forked child (a sandbox
or grader worker) does not inherit it, so a lock is never left stale. The file names the holder
(pid, host, start time) for the message a second start gets. Each process of a multi-host run
locks its own index, so `--distributed` works on a shared filesystem, while a second job with
the same index is refused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import sys
import time
import traceback

from autocode_jax.files import DataError


class RunDirBusy(RuntimeError):
  """The run directory is held by another live process; the message names it."""


# What a user can act on when a write fails: (errno, the cause in words).
_ACTIONABLE = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
               errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
               errno.EROFS: "read-only file system"}
# The checkpoint library reports a failed write as a ValueError carrying the OS error's text.
_OS_TEXT = {"No space left on device": errno.ENOSPC, "Disk quota exceeded": errno.EDQUOT,
            "Permission denied": errno.EACCES, "Read-only file system": errno.EROFS}


def actionable(e: BaseException, run_dir: str) -> str | None:
  """One line for an error a user can act on (a full disk, a quota, a permission, a read-only
  file system), found anywhere in e's chain of causes; None for any other error."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    code = e.errno if isinstance(e, OSError) else None
    if code not in _ACTIONABLE:
      code = next((c for text, c in _OS_TEXT.items() if text in str(e)), None)
    if code is not None:
      path = getattr(e, "filename", None) or _path_in(str(e)) or run_dir
      line = f"{_ACTIONABLE[code]} writing {path}"
      if code in (errno.ENOSPC, errno.EDQUOT):
        free = shutil.disk_usage(run_dir if os.path.exists(run_dir) else "/").free
        need = re.search(r"Failed to write (\d+) bytes", str(e))
        line += (f" ({_mib(free)} free" + (f"; the write needed {_mib(int(need.group(1)))}"
                                           if need else "") + ")")
      return line + "; make room (or fix the permission) and rerun the same command to resume"
    e = e.__cause__ or e.__context__
  return None


def _mib(n: int) -> str:
  return f"{n / 2**20:.1f} MiB"


def _path_in(text: str) -> str | None:
  m = re.search(r'local file "([^"]+)"', text) or re.search(r'Failed writing: "([^"]+)"', text)
  return m.group(1) if m else None


@contextlib.contextmanager
def errors_exit(script: str, run_dir: str, verbose: bool = False):
  """Around a run: errors a user can act on end it with one line naming the cause and the path
  (the traceback only with `verbose`). A held run directory exits 2; bad data (DataError:
  file, line, field) and a failed write exit 1. What was written before stays resumable.

  After a failed write, the process ends with os._exit: the checkpoint library's writer threads
  would otherwise print a traceback each as the interpreter shuts down."""
  try:
    yield
  except RunDirBusy as e:
    print(f"{script}: {e}", file=sys.stderr)
    sys.exit(2)
  except DataError as e:
    print(f"{script}: bad data: {e}", file=sys.stderr)
    sys.exit(1)
  except Exception as e:  # noqa: BLE001 (re-raised unless a user can act on it)
    line = actionable(e, run_dir)
    if line is None:
      raise
    if verbose:
      traceback.print_exc()
    print(f"{script}: {line}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


@contextlib.contextmanager
def hold(run_dir: str, index: int = 0):
  """Holds run_dir for this process (index: jax.process_index()); RunDirBusy if another holds
  it. Creates run_dir if needed."""
  os.makedirs(run_dir, exist_ok=True)
  path = os.path.join(run_dir, f"lock.p{index}")
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      raise RunDirBusy(f"{os.path.abspath(run_dir)} is in use by another run "
                       f"({_holder(fd)}); wait for it to end or use another run_dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                              "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
    yield path
  finally:
    os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
  try:
    info = json.loads(os.pread(fd, 4096, 0) or b"{}")
    return f"pid {info['pid']} on {info['host']}, since {info['since']}"
  except (ValueError, KeyError, OSError):
    return "holder unknown"
