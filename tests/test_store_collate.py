"""The JSONL store (crash-torn lines), atomic whole-file writes, and trajectory collation."""

import numpy as np
import pytest

from autocode_jax.data import DataError
from autocode_jax.files import JsonlStore, read_json, write_json, write_jsonl
from autocode_jax.training.collate import collate
from train_fixtures import record


def test_store_appends_and_survives_a_torn_write(tmp_path):
  store = JsonlStore(str(tmp_path / "it0" / "d_train.jsonl"))
  assert store.read() == []
  store.append([{"id": 1}, {"id": 2}])
  with open(store.path, "ab") as f:  # a crash in the middle of a write
    f.write(b'{"id": 3, "tok')
  assert [r["id"] for r in store.read()] == [1, 2]
  assert [n for n, _ in store.lines()] == [1, 2]
  store.append([{"id": 4}])
  assert [r["id"] for r in store.read()] == [1, 2, 4]
  assert open(store.path, "rb").read().count(b"\n") == 3  # the torn line was cut, not kept
  assert not store.cut_torn_tail()


def test_store_names_a_corrupt_line(tmp_path):
  path = tmp_path / "d.jsonl"
  path.write_text('{"id": 1}\nnot json\n{"id": 2}\n')
  with pytest.raises(DataError, match=f"{path}:2: invalid JSON"):
    JsonlStore(str(path)).read()
  path.write_text('{"id": 1}\n[1, 2]\n')
  with pytest.raises(DataError, match=f"{path}:2: expected a JSON object, got list"):
    JsonlStore(str(path)).read()


def test_whole_files_are_replaced_atomically(tmp_path):
  path = tmp_path / "summary.json"
  write_json(str(path), {"a": [1, 2]})
  assert read_json(str(path)) == {"a": [1, 2]}
  write_jsonl(str(tmp_path / "rows.jsonl"), [{"x": 1}, {"x": 2}])
  assert JsonlStore(str(tmp_path / "rows.jsonl")).read() == [{"x": 1}, {"x": 2}]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl", "summary.json"]  # no .tmp
  path.write_text('{"a": ')
  with pytest.raises(DataError, match=f"{path}:1: invalid JSON"):
    read_json(str(path))


def test_collate_aligns_roles_and_logprobs():
  recs = [record(prompt_ids=[5, 6], token_ids=[7, 8, 9, 10], roles="pmtm",
                 logprobs=[0.0, -1.0, 0.0, -2.0], advantage=1.0),
          record(prompt_ids=[5], token_ids=[11], logprobs=[-0.5], advantage=-1.0)]
  b = collate(recs, pad_id=0, length_multiple=4)
  assert b["tokens"].tolist() == [[5, 6, 7, 8, 9, 10, 0, 0], [5, 11, 0, 0, 0, 0, 0, 0]]
  assert b["attention_mask"].tolist()[1] == [1, 1, 0, 0, 0, 0, 0, 0]
  assert b["policy_mask"].tolist() == [[0, 0, 0, 1, 0, 1, 0, 0], [0, 1, 0, 0, 0, 0, 0, 0]]
  assert set(b) == {"tokens", "attention_mask", "policy_mask", "old_logprobs", "advantages"}
  np.testing.assert_array_equal(b["old_logprobs"][0], [0, 0, 0, -1, 0, -2, 0, 0])
  assert b["advantages"].tolist() == [1.0, -1.0]
  with pytest.raises(ValueError, match="record 1: 1 token_ids but 2 log-probs"):
    collate(recs, logprobs=[np.zeros(4), np.zeros(2)])
  # Behaviour log-probs in place of the engine's: only old_logprobs changes.
  c = collate(recs, pad_id=0, length_multiple=4, logprobs=[np.full(4, -3.0), np.full(1, -4.0)])
  assert all(np.array_equal(c[k], b[k]) for k in b if k != "old_logprobs")
  np.testing.assert_array_equal(c["old_logprobs"][1], [0, -4, 0, 0, 0, 0, 0, 0])
