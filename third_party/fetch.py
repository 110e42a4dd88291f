"""Fetches the third-party data and tokenizer files of manifest.json into a directory laid out
like shared/data, verifying each sha256. For users with internet access; tests never run it.

  python third_party/fetch.py --out=/data/autocode [--only=math500/test.jsonl,...]

Files are written under a temporary name and renamed once verified, so an interrupted or failed
fetch never leaves a partial file where the loaders look. Existing files with the right sha256
are kept.
"""

import hashlib
import io
import json
import os
import re
import sys
import tarfile
import tempfile
import urllib.request

from absl import app, flags

_OUT = flags.DEFINE_string("out", None, "directory to fill", required=True)
_ONLY = flags.DEFINE_list("only", [], "fetch only these manifest paths")
MANIFEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "manifest.json")


def _sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def _download(url: str) -> bytes:
  with urllib.request.urlopen(url, timeout=120) as r:
    return r.read()


def _assemble_math_train(url: str) -> bytes:
  """7,500 MATH train problems from the repository archive, one object a line."""
  prefix = re.compile(r"^[^/]+/src/agents/datasets/data/math/train/([^/]+)/(\d+)\.json$")
  rows = []
  with tarfile.open(fileobj=io.BytesIO(_download(url)), mode="r:gz") as tar:
    for member in tar:
      m = prefix.match(member.name)
      if m and member.isfile():
        obj = json.load(tar.extractfile(member))
        obj["unique_id"] = f"train/{m.group(1)}/{m.group(2)}.json"
        rows.append(((m.group(1), int(m.group(2))), obj))
  if len(rows) != 7500:
    raise RuntimeError(f"math_train: expected 7500 problems in the archive, found {len(rows)}")
  rows.sort(key=lambda r: r[0])
  return "".join(json.dumps(obj, ensure_ascii=False) + "\n" for _, obj in rows).encode()


def _derive_tokenizer_json(out_dir: str) -> bytes:
  from transformers import AutoTokenizer
  src = os.path.join(out_dir, "tokenizers", "qwen2.5")
  with tempfile.TemporaryDirectory() as tmp:
    AutoTokenizer.from_pretrained(src).save_pretrained(tmp)
    with open(os.path.join(tmp, "tokenizer.json"), "rb") as f:
      return f.read()


def _write_atomic(path: str, data: bytes) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".fetch-")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def main(_):
  with open(MANIFEST) as f:
    entries = json.load(f)["files"]
  unknown = set(_ONLY.value) - {e["path"] for e in entries}
  if unknown:
    sys.exit(f"--only: not in the manifest: {', '.join(sorted(unknown))}")
  failed = 0
  for e in entries:
    if _ONLY.value and e["path"] not in _ONLY.value:
      continue
    dest = os.path.join(_OUT.value, e["path"])
    if os.path.isfile(dest):
      with open(dest, "rb") as f:
        if _sha256(f.read()) == e["sha256"]:
          print(f"ok (present)  {e['path']}")
          continue
    built = "assembled" in e or "derived" in e
    try:
      if e.get("assembled") == "math_train":
        data = _assemble_math_train(e["url"])
      elif e.get("derived") == "tokenizer_json":
        data = _derive_tokenizer_json(_OUT.value)
      else:
        data = _download(e["url"])
    except Exception as err:  # noqa: BLE001 - report and go on with the other files
      print(f"FAILED        {e['path']}: {err}")
      failed += 1
      continue
    digest = _sha256(data)
    if digest != e["sha256"] and not built:
      print(f"FAILED        {e['path']}: sha256 {digest}, manifest says {e['sha256']}")
      failed += 1
      continue
    _write_atomic(dest, data)
    note = "" if digest == e["sha256"] else f" (rebuilt: sha256 {digest} differs from the reference)"
    print(f"ok (fetched)  {e['path']}{note}  [{e['licence']}]")
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  app.run(main)
