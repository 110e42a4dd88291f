"""Length-prefixed JSON messages over pipes, between the trainer and its helper processes
(sandbox servers, grader workers). Standard library only."""

from __future__ import annotations

import json
import os
import select
import struct
import time
from typing import BinaryIO

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def send(f: BinaryIO, obj) -> None:
  data = json.dumps(obj).encode()
  f.write(struct.pack("<I", len(data)) + data)
  f.flush()


def recv(f: BinaryIO):
  """The next message, or None at end of file."""
  head = f.read(4)
  if len(head) < 4:
    return None
  (n,) = struct.unpack("<I", head)
  return json.loads(f.read(n))


def recv_until(fd: int, deadline: float):
  """The next message from a raw pipe fd, or None if it closes or `deadline` (monotonic) passes."""
  buf, need, have_header = b"", 4, False
  while len(buf) < need:
    remaining = deadline - time.monotonic()
    if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
      return None
    chunk = os.read(fd, need - len(buf))
    if not chunk:
      return None
    buf += chunk
    if not have_header and len(buf) == 4:
      need, have_header = 4 + struct.unpack("<I", buf)[0], True
  return json.loads(buf[4:])


class Helper:
  """A helper process `python -m <module> <args>` speaking this protocol on stdin/stdout.

  Its first message says whether it started: {"ready": true, ...} or {"ready": false, "error"}.
  Started fresh with subprocess (never forked from the caller, which may hold JAX and threads),
  with `env` (default: the caller's) plus this package's root on PYTHONPATH, so that `-m` finds
  the module whether or not the package is installed.
  """

  def __init__(self, module: str, args: tuple[str, ...] = (), env: dict | None = None):
    import subprocess
    import sys
    import tempfile
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    self._log = tempfile.TemporaryFile()
    self.proc = subprocess.Popen([sys.executable, "-s", "-m", module, *args],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                 env=env, cwd="/", close_fds=True)
    self.hello: dict | None = None

  def wait_ready(self, timeout_s: float) -> dict:
    """The hello message; raises RuntimeError (with the helper's stderr) if it did not start."""
    hello = recv_until(self.proc.stdout.fileno(), time.monotonic() + timeout_s)
    if hello is None or not hello.get("ready"):
      why = (hello or {}).get("error") or self.stderr_tail() or "no answer"
      self.kill()
      raise RuntimeError(why)
    self.hello = hello
    return hello

  def stderr_tail(self) -> str:
    self._log.seek(0)
    return self._log.read()[-2000:].decode(errors="replace").strip()

  def request(self, obj, deadline: float):
    """The answer to obj, or None if the helper died or missed the deadline."""
    try:
      send(self.proc.stdin, obj)
    except OSError:
      return None
    return recv_until(self.proc.stdout.fileno(), deadline)

  def kill(self) -> None:
    try:
      self.proc.kill()
    except ProcessLookupError:
      pass
    self.proc.wait()
    for f in (self.proc.stdin, self.proc.stdout, self._log):
      try:
        f.close()
      except OSError:
        pass

  def close(self, timeout_s: float = 5.0) -> None:
    """End of input asks the helper to exit; it is killed if it has not after timeout_s."""
    try:
      self.proc.stdin.close()
      self.proc.wait(timeout_s)
    except Exception:  # noqa: BLE001 - a broken pipe or a timeout both end in kill()
      pass
    self.kill()


def close_all(helpers: list) -> None:
  """Closes every helper of the list (in place) and empties it; a weakref.finalize target."""
  for h in list(helpers):
    h.close(timeout_s=2.0)
  helpers.clear()
