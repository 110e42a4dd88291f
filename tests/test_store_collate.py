"""D_train store (crash-torn lines) and trajectory collation."""

import numpy as np
import pytest

from autocode_jax.data import DataError
from autocode_jax.data.store import TrajectoryStore
from autocode_jax.training.collate import collate


def test_store_appends_and_survives_a_torn_write(tmp_path):
  store = TrajectoryStore(str(tmp_path / "it0" / "d_train.jsonl"))
  assert store.read() == []
  store.append([{"id": 1}, {"id": 2}])
  with open(store.path, "ab") as f:  # a crash in the middle of a write
    f.write(b'{"id": 3, "tok')
  assert [r["id"] for r in store.read()] == [1, 2]
  store.append([{"id": 4}])
  assert [r["id"] for r in store.read()] == [1, 2, 4] and len(store) == 3


def test_store_names_a_corrupt_line(tmp_path):
  path = tmp_path / "d.jsonl"
  path.write_text('{"id": 1}\nnot json\n{"id": 2}\n')
  with pytest.raises(DataError, match=f"{path}:2: invalid JSON"):
    TrajectoryStore(str(path)).read()


def test_collate_aligns_roles_and_logprobs():
  recs = [
      {"prompt_ids": [5, 6], "token_ids": [7, 8, 9, 10], "roles": ["prefix", "model", "tool", "model"],
       "logprobs": [0.0, -1.0, 0.0, -2.0]},
      {"prompt_ids": [5], "token_ids": [11], "roles": ["model"], "logprobs": [-0.5]},
  ]
  b = collate(recs, [1.0, -1.0], pad_id=0, length_multiple=4)
  assert b["tokens"].tolist() == [[5, 6, 7, 8, 9, 10, 0, 0], [5, 11, 0, 0, 0, 0, 0, 0]]
  assert b["attention_mask"].tolist()[1] == [1, 1, 0, 0, 0, 0, 0, 0]
  assert b["policy_mask"].tolist() == [[0, 0, 0, 1, 0, 1, 0, 0], [0, 1, 0, 0, 0, 0, 0, 0]]
  assert set(b) == {"tokens", "attention_mask", "policy_mask", "old_logprobs", "advantages"}
  np.testing.assert_array_equal(b["old_logprobs"][0], [0, 0, 0, -1, 0, -2, 0, 0])
  assert b["advantages"].tolist() == [1.0, -1.0]
  with pytest.raises(ValueError, match="record 0"):
    collate([dict(recs[0], roles=["model"])], [0.0])
  # D_train stores roles as one letter per token: the same batch.
  coded = [dict(recs[0], roles="pmtm"), dict(recs[1], roles="m")]
  c = collate(coded, [1.0, -1.0], pad_id=0, length_multiple=4)
  assert all(np.array_equal(c[k], b[k]) for k in b)
