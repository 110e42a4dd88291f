"""Minimal safetensors reader and streaming writer on numpy, with bfloat16 (which
`safetensors.numpy` cannot represent). Reading is zero-copy through mmap; writing streams one
tensor at a time, so neither direction ever holds a whole model in host memory."""

from __future__ import annotations

import json
import mmap
import struct
from typing import Iterable, Iterator

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in DTYPES.items()}


class SafetensorsError(ValueError):
  """A safetensors file is malformed or uses an unsupported dtype."""


class SafetensorsReader:
  """Lazy access to the tensors of one .safetensors file."""

  def __init__(self, path: str):
    self.path = path
    with open(path, "rb") as f:
      head = f.read(8)
      if len(head) != 8:
        raise SafetensorsError(f"{path}: truncated (no header length)")
      (n,) = struct.unpack("<Q", head)
      try:
        header = json.loads(f.read(n))
      except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SafetensorsError(f"{path}: unreadable header: {e}") from None
      self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    self.metadata = header.pop("__metadata__", {}) or {}
    self._header = header
    self._data_start = 8 + n

  def keys(self) -> list[str]:
    return list(self._header)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._header[name]["shape"])

  def get(self, name: str) -> np.ndarray:
    """A read-only view of the tensor (no copy)."""
    info = self._header[name]
    if info["dtype"] not in DTYPES:
      raise SafetensorsError(f"{self.path}: tensor {name!r} has unsupported dtype {info['dtype']}")
    dtype = DTYPES[info["dtype"]]
    begin, end = info["data_offsets"]
    count = int(np.prod(info["shape"], dtype=np.int64))
    if end - begin != count * dtype.itemsize or self._data_start + end > len(self._mm):
      raise SafetensorsError(f"{self.path}: tensor {name!r} has inconsistent offsets")
    arr = np.frombuffer(self._mm, dtype=dtype, count=count, offset=self._data_start + begin)
    return arr.reshape(info["shape"])


def write_file(path: str, specs: list[tuple[str, tuple[int, ...], np.dtype]],
               tensors: Iterable[np.ndarray], metadata: dict[str, str] | None = None) -> None:
  """Writes tensors announced by `specs` (name, shape, dtype), produced lazily in the same order."""
  header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
  offset = 0
  for name, shape, dtype in specs:
    dtype = np.dtype(dtype)
    if dtype not in _NAMES:
      raise SafetensorsError(f"{path}: cannot write dtype {dtype} of tensor {name!r}")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    header[name] = {"dtype": _NAMES[dtype], "shape": list(shape),
                    "data_offsets": [offset, offset + nbytes]}
    offset += nbytes
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned, as the reference writer does
  it: Iterator[np.ndarray] = iter(tensors)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for name, shape, dtype in specs:
      arr = next(it)
      if tuple(arr.shape) != tuple(shape) or arr.dtype != np.dtype(dtype):
        raise SafetensorsError(f"{path}: tensor {name!r} is {arr.dtype}{list(arr.shape)}, "
                               f"announced {np.dtype(dtype)}{list(shape)}")
      f.write(np.ascontiguousarray(arr).tobytes())
