"""A run directory is held by one process at a time, and a killed holder leaves no stale lock."""

import errno
import os
import signal
import socket
import subprocess
import sys

import pytest

from autocode_jax.rundir import RunDirBusy, actionable, hold

HOLDER = """
import sys, time
from autocode_jax.rundir import hold
with hold(sys.argv[1], int(sys.argv[2])):
  print("held", flush=True)
  time.sleep(600)
"""


def _holder(run_dir, index=0):
  env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  p = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir), str(index)], env=env,
                       stdout=subprocess.PIPE, text=True)
  assert p.stdout.readline().strip() == "held"
  return p


def test_a_second_holder_is_refused_until_the_first_is_killed(tmp_path):
  run_dir = tmp_path / "run"
  p = _holder(run_dir)
  try:
    with pytest.raises(RunDirBusy, match=f"{run_dir} is in use by another run "
                       f"\\(pid {p.pid} on {socket.gethostname()}, since "):
      with hold(str(run_dir)):
        pass
    with hold(str(run_dir), index=1):  # another process index of a multi-host run
      pass
  finally:
    p.send_signal(signal.SIGKILL)
    p.wait()
  with hold(str(run_dir)) as path:  # the kernel dropped the killed holder's lock
    assert open(path).read().startswith(f'{{"pid": {os.getpid()}')
  with hold(str(run_dir)):  # and a released one
    pass


FORK = """
import os, sys
from autocode_jax.rundir import hold
r, w = os.pipe()
with hold(sys.argv[1]):
  child = os.fork()
  if child == 0:  # waits until told, holding copies of every descriptor
    os.close(w)
    os.read(r, 1)
    os._exit(0)
with hold(sys.argv[1]):  # refused if the live child held the lock
  print("reacquired while the child lives", flush=True)
os.write(w, b"x")
os.waitpid(child, 0)
"""


def test_a_forked_child_does_not_keep_the_lock(tmp_path):
  """Sandbox and grader workers are forked from the run: they must not hold it after it ends.
  (Forked in a fresh interpreter: this one has JAX's threads.)"""
  env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  out = subprocess.run([sys.executable, "-c", FORK, str(tmp_path / "run")], env=env,
                       capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == "reacquired while the child lives"


def test_errors_a_user_can_act_on_are_one_line(tmp_path):
  err = OSError(errno.EACCES, "Permission denied", "/data/run/config.json")
  assert actionable(err, str(tmp_path)).startswith(
      "permission denied writing /data/run/config.json; ")
  # The checkpoint library's form: a ValueError whose text carries the OS error, as a cause.
  inner = ValueError('RESOURCE_EXHAUSTED: Error writing "w/0" in OCDBT database at local file '
                     '"/r/checkpoints/1.tmp/": Failed writing: "/r/x": Failed to write 2097152 '
                     "bytes to file 14: No space left on device [os_error_code='28']")
  outer = RuntimeError("Save Finalize thread (save_finalize) failed.")
  outer.__cause__ = inner
  line = actionable(outer, str(tmp_path))
  assert line.startswith("no space left on device writing /r/checkpoints/1.tmp/ (")
  assert "MiB free; the write needed 2.0 MiB)" in line
  assert actionable(ValueError("shapes (3,) and (4,) differ"), str(tmp_path)) is None
  assert actionable(OSError(errno.ENOENT, "No such file"), str(tmp_path)) is None
