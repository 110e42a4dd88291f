"""Files a crash must not half-write: the one JSONL store (D_train, per-query statistics,
metrics.jsonl, evaluation rows) and the one atomic whole-file write, used by every JSON and JSONL
file the program writes.

JSONL appends write whole lines and fsync. A write torn by a crash leaves a last line without its
newline: readers skip it and the next append cuts it off; any other bad line is a DataError
naming the file and the line. Whole files (JSON, or a JSONL file rewritten) go under a temporary
name, are fsynced and renamed into place, so a reader sees the old file or the new one.
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Iterator


class DataError(ValueError):
  """A data file is missing or malformed; the message names the file, line and field."""


def json_object(line, path: str, lineno: int) -> dict:
  """The JSON object of one line of `path`; a DataError naming file and line otherwise."""
  try:
    obj = json.loads(line)
  except json.JSONDecodeError as e:
    raise DataError(f"{path}:{lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
  if not isinstance(obj, dict):
    raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
  return obj


def _line(obj: dict) -> str:
  return json.dumps(obj, separators=(",", ":")) + "\n"


class JsonlStore:
  """An append-only JSONL file of JSON objects, one a line (see the module docstring)."""

  def __init__(self, path: str):
    self.path = path

  def cut_torn_tail(self) -> bool:
    """Truncates the file after its last newline (a torn last write); whether it cut."""
    if not os.path.exists(self.path):
      return False
    with open(self.path, "rb+") as f:
      size = f.seek(0, os.SEEK_END)
      pos, chunk = size, 1 << 16
      while pos > 0:
        start = max(0, pos - chunk)
        f.seek(start)
        nl = f.read(pos - start).rfind(b"\n")
        if nl >= 0:
          end = start + nl + 1
          break
        pos = start
      else:
        end = 0
      if end == size:
        return False
      f.truncate(end)
      return True

  def append(self, objs: Iterable[dict]) -> None:
    """Appends whole lines and fsyncs (after cutting a torn tail)."""
    data = "".join(_line(o) for o in objs).encode()
    if not data:
      return
    os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
    self.cut_torn_tail()
    fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
      os.write(fd, data)
      os.fsync(fd)
    finally:
      os.close(fd)

  def lines(self, strict: bool = False) -> Iterator[tuple[int, dict]]:
    """(line number, object) of every complete line, in order; none if the file is absent.
    strict: a torn last line is an error too (a file whose writer has finished)."""
    if not os.path.exists(self.path):
      return
    with open(self.path, "rb") as f:
      data = f.read()
    lines = data.split(b"\n")
    if strict and lines[-1]:
      raise DataError(f"{self.path}:{len(lines)}: truncated line (the file ends without a "
                      "newline)")
    for lineno, line in enumerate(lines[:-1], 1):  # after the last newline: torn
      yield lineno, json_object(line, self.path, lineno)

  def read(self) -> list[dict]:
    return [obj for _, obj in self.lines()]


def read_jsonl(path: str) -> list[dict]:
  """Every complete line of a JSONL file (the store's reading: a torn last line skipped)."""
  return JsonlStore(path).read()


def shard_paths(out_dir: str, name: str) -> list[str]:
  """out_dir/{name}*.jsonl (one shard per host), in name order."""
  return [os.path.join(out_dir, f) for f in sorted(os.listdir(out_dir))
          if f.startswith(name) and f.endswith(".jsonl")]


def read_shards(out_dir: str, name: str) -> list[dict]:
  """Every object of out_dir/{name}*.jsonl, shards in name order."""
  return [obj for path in shard_paths(out_dir, name) for obj in read_jsonl(path)]


def read_json(path: str):
  """A JSON file's value; a malformed file is a DataError naming it."""
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None


def write_text(path: str, text: str) -> None:
  """`text` into `path` atomically: a temporary name, fsync, rename."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def write_jsonl(path: str, objs: Iterable[dict]) -> None:
  """A whole JSONL file, atomically."""
  write_text(path, "".join(_line(o) for o in objs))


def write_json(path: str, obj, indent: int = 1) -> None:
  """A JSON file, atomically."""
  write_text(path, json.dumps(obj, indent=indent))
