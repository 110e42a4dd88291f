"""The evaluation harness on a tiny random HF checkpoint and real benchmark files; the report's
table and plots; experiments/eval.py's flag checks."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from autocode_jax.eval import harness, report
from autocode_jax.models import init_model, preset, save_pretrained
from autocode_jax.rollout.session import RolloutSettings

REPO = pathlib.Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, shared_dir):
  d = tmp_path_factory.mktemp("hf") / "tiny"
  cfg = preset("tiny-qwen2").replace(vocab_size=151680, eos_token_id=151643)
  save_pretrained(init_model(cfg, seed=0), str(d),
                  tokenizer_dir=str(shared_dir / "data" / "tokenizers" / "qwen2.5" / "derived"))
  return d


@pytest.mark.slow
def test_evaluate_writes_rows_results_table_and_plots(model_dir, shared_dir, tmp_path):
  cfg = harness.EvalConfig(model_dir=str(model_dir), out_dir=str(tmp_path / "out"),
                           benchmarks=("math500", "aime24"), data_dir=str(shared_dir / "data"),
                           limit=2, samples=2, max_tokens=12,
                           rollout=RolloutSettings(sandbox_workers=1))
  results = harness.evaluate(cfg, log=lambda *_: None)
  out = tmp_path / "out"
  rows = {b: [json.loads(x) for x in (out / "rows" / f"{b}.jsonl").read_text().splitlines()]
          for b in ("math500", "aime24")}
  assert len(rows["math500"]) == 2 * 3 and {r["sample"] for r in rows["math500"]} == {0}
  assert len(rows["aime24"]) == 2 * 3 * 2 and {r["sample"] for r in rows["aime24"]} == {0, 1}
  assert {r["mode"] for r in rows["aime24"]} == {"cot", "code", "auto"}
  assert set(results) == {"math500", "aime24"} and results["aime24"]["n_samples"] == 2
  for r in results.values():
    assert set(r["accuracy"]) == {"cot", "code", "auto"} and r["queries"] == 2
    assert "union_bound" in r and "selection_accuracy" in r and sum(r["invocation_hist"]) == 2
    assert r["grader_timeouts"] == r["grader_errors"] == 0
  assert json.loads((out / "results.json").read_text()) == results
  table = (out / "summary.md").read_text().splitlines()
  assert table[0].startswith("| benchmark | n | auto acc | code acc | cot acc |")
  assert [line.split(" | ")[0] for line in table[2:]] == ["| math500", "| aime24"]
  for png in ("accuracy_by_mode.png", "invocation_hist.png"):
    assert (out / png).read_bytes()[:8] == PNG
  # A rerun finds every benchmark done and only rewrites the report.
  stamp = (out / "rows" / "math500.jsonl").stat().st_mtime_ns
  assert harness.evaluate(cfg, log=lambda *_: None) == results
  assert (out / "rows" / "math500.jsonl").stat().st_mtime_ns == stamp


def test_markdown_table_by_hand():
  results = {"gsm8k": {"accuracy": {"auto": 0.5, "cot": 0.25, "code": 0.75},
                       "code_rate": {"auto": 0.125}, "union_bound": 1.0,
                       "selection_accuracy": None, "n_samples": 1, "grader_timeouts": 2,
                       "grader_errors": 0}}
  assert report.markdown_table(results) == (
      "| benchmark | n | auto acc | code acc | cot acc | union bound | selection acc | "
      "auto code rate | grader timeouts / errors |\n|---|---|---|---|---|---|---|---|---|\n"
      "| gsm8k | 1 | 50.0 | 75.0 | 25.0 | 100.0 | - | 12.5 | 2 / 0 |\n")


def test_training_curves_from_a_run_directory(tmp_path):
  for it, (cot, auto_code) in enumerate(((0, 0), (1, 1))):
    d = tmp_path / "iterations" / f"{it:04d}"
    d.mkdir(parents=True)
    rows = [{"query_id": "q", "mode": "cot", "correct": cot, "label": 0},
            {"query_id": "q", "mode": "auto", "correct": 1, "label": auto_code}]
    (d / "eval.p0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (tmp_path / "iterations" / "0002").mkdir()  # not evaluated: skipped
  by_it = report.training_curves(str(tmp_path), str(tmp_path / "curves.png"))
  assert sorted(by_it) == [0, 1]
  assert by_it[0]["accuracy"] == {"auto": 1.0, "cot": 0.0}
  assert by_it[1]["code_rate"]["auto"] == 1.0
  assert (tmp_path / "curves.png").read_bytes()[:8] == PNG


@pytest.mark.slow
@pytest.mark.parametrize("args, flag", [((), "--model_dir"), (("--model_dir=/nonexistent",), "--model_dir"),
                                        (("--model_dir=/tmp", "--modes=chat"), "--modes")])
def test_eval_script_rejects_bad_flags(args, flag, tmp_path):
  p = subprocess.run([sys.executable, str(REPO / "experiments" / "eval.py"),
                      f"--out_dir={tmp_path / 'o'}", *args], cwd=REPO, capture_output=True,
                     text=True, timeout=120)
  assert p.returncode == 2 and flag in p.stderr, p.stderr[-2000:]
  assert not os.path.exists(tmp_path / "o")


def test_a_generated_benchmark_is_served_by_the_registry(shared_dir):
  """--benchmarks=synthetic needs --limit (a bad flag naming it otherwise); with one, its
  evaluation split comes from the registry, nothing read from data_dir."""
  from autocode_jax.flagging import ConfigError
  with pytest.raises(ConfigError, match="^limit: a generated benchmark needs a number"):
    harness.EvalConfig(model_dir="m", out_dir="o", benchmarks=("synthetic",))
  cfg = harness.EvalConfig(model_dir="m", out_dir="o", benchmarks=("synthetic", "aime24"),
                           limit=5, data_dir=str(shared_dir / "data"))
  qs = harness._queries(cfg, "synthetic")
  assert len(qs) == 5 and all(q.source == "synthetic" for q in qs)
  assert len(harness._queries(cfg, "aime24")) == 5
