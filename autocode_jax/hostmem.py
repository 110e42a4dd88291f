"""Host allocator settings for XLA on the CPU: call `keep_freed_memory()` first thing in a script.

XLA packs a program's temporaries into one buffer per execution. On the CPU backend that buffer
(180 MB for a train step of the demo's 2-layer model, batch 32 x 128) is allocated and freed on
every call, and glibc serves any allocation above 32 MB with a fresh mmap and returns it with
munmap, so every step faults the whole buffer in again page by page: measured on 2 cores, 45,000
page faults and 100 ms of kernel time per 160 ms step. With mmap off, one arena and the largest
trim threshold mallopt takes (2 GiB; at 1 GiB, a torch step between two of ours left a top chunk
big enough to be trimmed, and our next step faulted 130,000 pages in again), freed memory stays
in the heap for the next call (2,200 faults, 10 ms; the step takes 100-115 ms), at the cost of
the process holding its peak heap until it exits.

The settings are glibc's `mallopt`, applied at run time; they only take hold before other
threads allocate, so call this before importing numpy, torch or jax. It does nothing where an
accelerator plugin for JAX is installed (the XLA temporaries then live in device memory), off
glibc, or with AUTOCODE_JAX_HOST_MALLOC=default.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                        "jax_rocm7_plugin", "libtpu")
ENV = "AUTOCODE_JAX_HOST_MALLOC"


def _accelerator_plugin() -> str | None:
  if os.environ.get("JAX_PLATFORMS", "").split(",")[0].strip() == "cpu":
    return None
  for name in _ACCELERATOR_PLUGINS:
    try:
      if importlib.util.find_spec(name) is not None:
        return name
    except (ImportError, ValueError):
      continue
  return None


def keep_freed_memory(trim_threshold: int = 2**31 - 1) -> bool:
  """Keeps freed host memory for reuse (see the module docstring). True if applied."""
  if os.environ.get(ENV, "") == "default" or not sys.platform.startswith("linux"):
    return False
  if _accelerator_plugin() is not None:
    return False
  try:
    libc = ctypes.CDLL("libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # not glibc (musl, ...)
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  trim = min(trim_threshold, 2**31 - 1)
  return all(mallopt(opt, value) == 1 for opt, value in
             ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, trim)))
