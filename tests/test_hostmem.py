"""hostmem.keep_freed_memory: freed large blocks stay mapped, so using one again does not fault
its pages in anew; off with AUTOCODE_JAX_HOST_MALLOC=default. Each case runs in a fresh
interpreter, since mallopt settings last for the process."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Allocates, touches and frees a 64 MiB block, then does it again and counts the minor page
# faults of the second round: ~16,000 (one per 4 KiB page) when glibc unmaps the freed block.
_CHILD = r"""
import json, resource, sys
sys.path.insert(0, sys.argv[1])
from autocode_jax import hostmem
applied = hostmem.keep_freed_memory()
import numpy as np
try:  # count 4 KiB pages: no transparent huge pages for numpy's large blocks
  np._core.multiarray._set_madvise_hugepage(False)
except AttributeError:
  np.core.multiarray._set_madvise_hugepage(False)
def touch():
  a = np.empty(64 << 20, np.uint8)
  a[::4096] = 1
  del a
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
print(json.dumps({"applied": applied,
                  "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _run(**env):
  out = subprocess.run([sys.executable, "-c", _CHILD, ROOT], capture_output=True, text=True,
                       env=dict(os.environ, JAX_PLATFORMS="cpu", **env), timeout=120, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_freed_memory_is_kept_and_the_env_var_turns_it_off():
  kept = _run()
  default = _run(AUTOCODE_JAX_HOST_MALLOC="default")
  assert kept["applied"] and not default["applied"]
  assert default["faults"] > 8000, default  # the block was unmapped and faulted in again
  assert kept["faults"] < 1000, kept
