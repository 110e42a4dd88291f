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
