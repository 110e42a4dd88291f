"""Dataset loaders, schema errors, stratified sampling and prompts."""

import collections
import json

import pytest

from autocode_jax.data import (CODE_PREFIX, DATASETS, DataError, build_prompt,
                               load_dataset, stratified_sample)
from autocode_jax.models import load_tokenizer

COUNTS = {"gsm8k": 1319, "math500": 500, "gaokao2023en": 385, "olympiadbench": 675,
          "aime24": 30, "amc23": 40, "math_train": 7500, "gsm8k_train": 7473}


@pytest.fixture(scope="module")
def data_dir(shared_dir):
  return str(shared_dir / "data")


@pytest.mark.parametrize("name", sorted(n for n in DATASETS if n != "synthetic"))
def test_every_dataset_loads(name, data_dir):
  queries = load_dataset(name, data_dir)
  assert len(queries) == COUNTS[name]
  assert len({q.id for q in queries}) == len(queries)
  assert all(q.problem and q.source == name for q in queries)


def test_the_registry_serves_read_and_generated_datasets_alike(data_dir):
  """The loop and evaluation ask the registry by name: a read dataset's sample is stratified and
  seeded; the generated task's queries and SFT corpus are made by code (its splits disjoint),
  and it refuses what it cannot serve."""
  from autocode_jax.data import synthetic
  from autocode_jax.data.datasets import is_generated, sample_queries, sft_examples
  assert is_generated("synthetic") and not is_generated("math500")
  a = sample_queries("math500", data_dir, 20, seed=3)
  assert len(a) == 20 and a == sample_queries("math500", data_dir, 20, seed=3)
  assert a != sample_queries("math500", data_dir, 20, seed=4)
  assert len(sample_queries("aime24", data_dir, 0)) == 30
  with pytest.raises(ValueError, match="31 > the 30 queries of aime24"):
    sample_queries("aime24", data_dir, 31)
  assert len(sample_queries("aime24", data_dir, 31, at_most=True)) == 30  # eval.py's --limit
  train = sample_queries("synthetic", data_dir, 10, task_seed=2)
  assert [q.id for q in train] == [p.id for p in synthetic.split_problems(10, 2, synthetic.TRAIN)]
  evals = sample_queries("synthetic", data_dir, 10, split="eval", task_seed=2)
  assert not {q.id for q in train} & {q.id for q in evals}
  assert all(q.source == "synthetic" and q.gold for q in train + evals)
  with pytest.raises(ValueError, match="synthetic is generated: give the number"):
    sample_queries("synthetic", data_dir, 0)
  with pytest.raises(DataError, match="synthetic is generated"):
    load_dataset("synthetic", data_dir)
  examples = sft_examples("synthetic", train[:4], n=10, task_seed=2, seed=0, code_share=0.5)
  assert len(examples) == 8 and {e.query.id for e in examples} == {q.id for q in train[:4]}
  train_set = load_dataset("math_train", data_dir)[:3]
  assert [e.response for e in sft_examples("math_train", train_set)] == [
      q.solution for q in train_set]


def test_fields_of_known_records(data_dir):
  q = load_dataset("math500", data_dir)[0]
  assert (q.id, q.level) == ("math500/test/precalculus/807.json", 2)
  assert q.gold == "\\left( 3, \\frac{\\pi}{2} \\right)"
  assert load_dataset("gsm8k", data_dir)[0].gold == "18"
  assert load_dataset("amc23", data_dir)[0].gold == "27"
  train = load_dataset("math_train", data_dir)
  assert collections.Counter(q.level for q in train)[None] == 2  # the two "Level ?" problems
  assert train[0].gold == "0"


def _write(tmp_path, name, lines):
  path = tmp_path / DATASETS[name].path
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(l + "\n" for l in lines))
  return path


def test_malformed_json_names_the_line(tmp_path):
  path = _write(tmp_path, "gsm8k", ['{"question": "q", "answer": "#### 1"}', '{"question": "q2",'])
  with pytest.raises(DataError, match=f"{path}:2: invalid JSON"):
    load_dataset("gsm8k", str(tmp_path))


@pytest.mark.parametrize("record, message", [
    ({"question": "q"}, "line_no: missing field 'answer'"),
    ({"question": 3, "answer": "#### 1"}, "line_no: field 'question': expected str, got int"),
    ({"question": "q", "answer": "42"}, "line_no: field 'answer' has no '####'"),
])
def test_schema_errors_name_line_and_field(tmp_path, record, message):
  good = json.dumps({"question": "fine", "answer": "#### 2"})
  path = _write(tmp_path, "gsm8k", [good, "", good, json.dumps(record)])
  with pytest.raises(DataError) as e:
    load_dataset("gsm8k", str(tmp_path))
  assert message.replace("line_no", f"{path}:4") in str(e.value)


def test_missing_file_and_unknown_dataset(tmp_path):
  with pytest.raises(DataError, match="no such file"):
    load_dataset("math500", str(tmp_path))
  with pytest.raises(DataError, match="unknown dataset 'math501'"):
    load_dataset("math501", str(tmp_path))


def test_stratified_sample_proportional(data_dir):
  pool = load_dataset("math_train", data_dir)
  sample = stratified_sample(pool, 700, seed=3)
  assert len(sample) == 700 and len({q.id for q in sample}) == 700
  have = collections.Counter(q.level for q in pool)
  got = collections.Counter(q.level for q in sample)
  for level, n in have.items():
    assert abs(got[level] - 700 * n / len(pool)) <= 1
  assert [q.id for q in stratified_sample(pool, 700, seed=3)] == [q.id for q in sample]
  assert [q.id for q in stratified_sample(pool, 700, seed=4)] != [q.id for q in sample]


def test_stratified_sample_uniform_caps_small_levels(data_dir):
  pool = load_dataset("math_train", data_dir)
  got = collections.Counter(q.level for q in stratified_sample(pool, 1000, weights="uniform"))
  assert got[None] == 2  # only two exist; their share goes to the others
  assert sorted(got[l] for l in range(1, 6)) == [199, 199, 200, 200, 200]
  with pytest.raises(ValueError, match="n=8000"):
    stratified_sample(pool, 8000)


@pytest.fixture(scope="module")
def tokenizer(shared_dir):
  return load_tokenizer(str(shared_dir / "data" / "tokenizers" / "qwen2.5" / "derived"))


def test_prompt_modes_and_probe(tokenizer):
  auto = build_prompt("What is 2+3?", "auto", tokenizer=tokenizer)
  assert auto.prefix == "" and auto.text.endswith("<|im_start|>assistant\n")
  assert "What is 2+3?<|im_end|>" in auto.text
  cot = build_prompt("What is 2+3?", "cot", tokenizer=tokenizer)
  code = build_prompt("What is 2+3?", "code", tokenizer=tokenizer)
  assert "do not write any code" in cot.text and "```python" in code.text
  probe = build_prompt("What is 2+3?", "auto", "code_prefix", tokenizer=tokenizer)
  assert probe.text == auto.text and probe.full == auto.text + CODE_PREFIX
  assert CODE_PREFIX == "Let's first analyze the problem, then consider if python code could help."


def test_plain_template_for_base_models(tokenizer):
  p = build_prompt("What is 2+3?", "cot", template="plain", tokenizer=tokenizer)
  assert "<|im_start|>" not in p.text and p.text.endswith("do not write any code.\n\n")
  assert build_prompt("What is 2+3?", "cot", template="plain").text == p.text
  with pytest.raises(ValueError, match="mode='fast'"):
    build_prompt("q", "fast")
  with pytest.raises(ValueError, match="needs the tokenizer"):
    build_prompt("q", "auto")
