"""Library logging is quiet by default (warnings and errors only) and verbose when asked; the
whole-program check (train.py on debug_cpu.flags) is in test_em_loop."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent

# A checkpoint save: orbax reports it at INFO through absl's handler.
PROBE = """
import sys
from absl import app, flags
from autocode_jax import logs
logs.define_flags()

def main(argv):
  logs.configure_from_flags()
  import jax.numpy as jnp
  import orbax.checkpoint as ocp
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(argv[1], {"w": jnp.ones(3)})
  ckpt.wait_until_finished()
  print("saved")

app.run(main)
"""


def is_info(line: str) -> bool:
  """An INFO line of Python logging or of absl's handler (`I1204 12:00:00.123 ...`)."""
  return line.startswith("INFO:") or (line[:1] == "I" and line[1:5].isdigit())


def run_probe(tmp_path, *args) -> list[str]:
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "ckpt"), *args], env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0 and out.stdout.strip() == "saved", out.stderr[-3000:]
  return out.stderr.splitlines()


@pytest.mark.parametrize("args, verbose", [((), False), (("--verbose",), True),
                                           (("-v=0",), True), (("--verbosity=-1",), False)])
def test_library_info_lines_only_when_asked(tmp_path, args, verbose):
  lines = run_probe(tmp_path, *args)
  info = [line for line in lines if is_info(line)]
  if verbose:
    assert any("checkpoint" in line for line in info), lines
  else:
    assert not info, info


def test_divert_sends_library_errors_and_tracebacks_to_the_log(tmp_path, capsys):
  """Around a quiet run: a library's ERROR record and a traceback printed by a library thread
  go to the log file; warnings, our own records and other lines stay on the terminal; sys.stderr
  and the handlers are restored, also when the block raises (Python then prints our traceback
  on the terminal)."""
  import io
  import logging
  from autocode_jax import logs
  seen = io.StringIO()
  handler = logging.StreamHandler(seen)
  root = logging.getLogger()
  root.addHandler(handler)
  path = tmp_path / "libraries.log"
  ours = str(REPO / "autocode_jax" / "em" / "loop.py")
  try:
    before = sys.stderr
    with pytest.raises(KeyError):
      with logs.divert(str(path)):
        logging.getLogger("orbax").error("Save Finalize thread failed")  # from this file
        logging.getLogger("orbax").warning("a library warning")
        root.handle(root.makeRecord("autocode_jax", logging.ERROR, ours, 1, "our error", (), None))
        sys.stderr.write("Traceback (most recent call last):\n  File \"base_events.py\", line 1"
                         "\nRuntimeError: Event loop is closed\n")
        sys.stderr.write("progress 50%\n")
        raise KeyError("ours")
    assert sys.stderr is before and not any(isinstance(f, logs._LibraryErrorsTo)
                                            for f in handler.filters)
  finally:
    root.removeHandler(handler)
  log = path.read_text()
  assert "Save Finalize thread failed" in log and "Event loop is closed" in log
  assert "a library warning" not in log and "our error" not in log and "progress" not in log
  shown = seen.getvalue()
  assert "a library warning" in shown and "our error" in shown
  assert "Save Finalize" not in shown
  err = capsys.readouterr().err
  assert "progress 50%" in err and "Traceback" not in err


def test_divert_keeps_tracebacks_of_threads_failing_together_off_the_terminal(tmp_path):
  """Writer threads that fail at once print their tracebacks interleaved line by line (the
  full-disk run showed it): each thread's block still goes whole to the log, as does a thread
  hook's header; a progress bar's partial line reaches the terminal at once."""
  import io
  import threading
  from autocode_jax import logs
  terminal, log = io.StringIO(), io.StringIO()
  d = logs._Diverter(terminal, log)
  lines = ["Traceback (most recent call last):\n", '  File "base_events.py", line 806\n',
           "    self._check_closed()\n", "RuntimeError: Event loop is closed\n"]
  turns = [threading.Event() for _ in range(2 * len(lines) + 1)]

  def thread(k):
    for i, line in enumerate(lines):
      turns[2 * i + k].wait(10)
      d.write(line)
      turns[2 * i + k + 1].set()

  threads = [threading.Thread(target=thread, args=(k,)) for k in (0, 1)]
  for t in threads:
    t.start()
  turns[0].set()
  for t in threads:
    t.join(10)
  d.write("Exception in thread writer:\nTraceback (most recent call last):\n  File \"x\"\n"
          "KeyError: 1\n")
  d.write("\riter 0 E-step: 5%")
  assert terminal.getvalue() == "\riter 0 E-step: 5%"
  assert log.getvalue().count("RuntimeError: Event loop is closed") == 2
  assert "Exception in thread writer:" in log.getvalue() and "KeyError: 1" in log.getvalue()
