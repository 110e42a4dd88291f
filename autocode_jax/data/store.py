"""D_train on disk: trajectories appended as they are produced, one JSON object a line, so that a
crash loses at most the batch being written and the M-step can be rerun without new rollouts."""

from __future__ import annotations

import json
import os

from autocode_jax.data.datasets import DataError


class TrajectoryStore:
  """An append-only JSONL file of records (dicts).

  Each `append` writes whole lines and fsyncs. A write torn by a crash leaves a last line without
  its newline: readers ignore it, and the next `append` cuts it off before writing.
  """

  def __init__(self, path: str):
    self.path = path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

  def _drop_torn_tail(self) -> None:
    if not os.path.exists(self.path):
      return
    with open(self.path, "rb+") as f:
      f.seek(0, os.SEEK_END)
      size = f.tell()
      if size == 0:
        return
      # Find the last newline; everything after it is a torn write.
      pos, chunk = size, 1 << 16
      while pos > 0:
        start = max(0, pos - chunk)
        f.seek(start)
        data = f.read(pos - start)
        nl = data.rfind(b"\n")
        if nl >= 0:
          f.truncate(start + nl + 1)
          return
        pos = start
      f.truncate(0)

  def append(self, records: list[dict]) -> None:
    if not records:
      return
    self._drop_torn_tail()
    data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
    fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
      os.write(fd, data)
      os.fsync(fd)
    finally:
      os.close(fd)

  def read(self) -> list[dict]:
    """Every complete record; a torn last line is skipped, any other bad line is an error."""
    if not os.path.exists(self.path):
      return []
    with open(self.path, "rb") as f:
      data = f.read()
    lines = data.split(b"\n")
    complete = lines[:-1]  # the part after the last newline is empty or torn
    out = []
    for lineno, line in enumerate(complete, 1):
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise DataError(f"{self.path}:{lineno}: invalid JSON: {e.msg}") from None
    return out

  def __len__(self) -> int:
    return len(self.read())


def write_jsonl(path: str, records: list[dict]) -> None:
  """Writes a whole JSONL file under a temporary name, fsyncs, and renames it into place, so a
  reader sees the old file or the complete new one, never a part."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
