"""The D_train record: one serialisation to and from a JSONL line, lines of earlier versions
read into it, and a malformed or incomplete line refused naming the file, the line and the field."""

import json

import pytest

from autocode_jax.data.dtrain import TrainRecord, append_records, read_dtrain, read_records
from autocode_jax.files import DataError

# A line of an em D_train as written before the record existed (em.explore.to_record's dict,
# key order included): the record writes the same bytes.
EM_LINE = ('{"query_id":"math/1","probe":"code_prefix","iteration":0,"seed":17,"label":1,'
           '"reward":1.0,"prompt_ids":[1,2],"token_ids":[3,4,5,6],"roles":"pmtm",'
           '"logprobs":[0.0,-1.25,0.0,-0.5],"tool_statuses":["ok"],"stop_reason":"eos",'
           '"text":"x","advantage":0.5,"decision_ids":[3],"pi1":0.25,"q":[0.5,1.0],'
           '"s_star":[0.1,0.9],"group":"math/1"}')
# An sft line of then: other key order, no seed, a mode.
SFT_LINE = ('{"query_id":"math/2","probe":"sft","mode":"cot","iteration":1,"label":0,'
            '"reward":1.0,"prompt_ids":[1],"token_ids":[7,8],"roles":"mm","logprobs":[0.0,0.0],'
            '"advantage":0.0,"group":"math/2","tool_statuses":[],"stop_reason":"eos",'
            '"text":"y"}')


def test_lines_of_before_read_into_the_record_and_write_back():
  em = TrainRecord.from_json(json.loads(EM_LINE))
  assert em.token_ids == (3, 4, 5, 6) and em.s_star == (0.1, 0.9) and em.model_mask == [
      False, True, False, True]
  assert json.dumps(em.to_json(), separators=(",", ":")) == EM_LINE  # the same bytes
  sft = TrainRecord.from_json(json.loads(SFT_LINE))
  assert (sft.seed, sft.mode, sft.s_star, sft.length) == (None, "cot", None, 3)
  assert TrainRecord.from_json(sft.to_json()) == sft
  assert "seed" not in sft.to_json() and "s_star" not in sft.to_json()  # None: left out


def test_a_file_round_trips_and_a_torn_tail_is_not_a_record(tmp_path):
  recs = [TrainRecord.from_json(json.loads(line)) for line in (EM_LINE, SFT_LINE)]
  path = tmp_path / "it" / "dtrain.p0.jsonl"
  append_records(str(path), recs[:1])
  append_records(str(path), recs[1:])
  with open(path, "a") as f:
    f.write(EM_LINE[:40])
  assert read_records(str(path)) == recs
  with pytest.raises(DataError, match=f"^{path}:3: truncated line"):
    read_dtrain(str(path.parent))  # a finished E-step's D_train: a torn line is lost data
  append_records(str(path), recs[:1])  # cuts the torn line first
  assert read_dtrain(str(path.parent)) == recs + recs[:1]


@pytest.mark.parametrize("change, field", [
    (lambda d: d.pop("advantage"), "advantage"),
    (lambda d: d.update(reward="1"), "reward"),
    (lambda d: d.update(token_ids=[3, 4, "5", 6]), "token_ids"),
    (lambda d: d.update(label=True), "label"),
    (lambda d: d.update(roles="pmx m"[:4]), "roles"),
    (lambda d: d.update(logprobs=[0.0]), "roles"),  # lengths that disagree
    (lambda d: d.update(s_star=[1.0]), "s_star"),
    (lambda d: d.update(advantages=0.5), "advantages"),
])
def test_a_bad_line_names_file_line_and_field(tmp_path, change, field):
  path = tmp_path / "dtrain.jsonl"
  bad = json.loads(EM_LINE)
  change(bad)
  path.write_text(EM_LINE + "\n" + json.dumps(bad) + "\n")
  with pytest.raises(DataError, match=f"^{path}:2: .*{field}"):
    read_records(str(path))
