"""The README's main command, shortened: experiments/configs/demo.flags (beta = 1, the exact
decision term) with a few problems and a short warm start, end to end (tokenizer, SFT warm start,
EM, RL and SFT continued, the comparison); then the sweep script over that run."""

import json
import pathlib
import subprocess
import sys

import pytest

from autocode_jax.data.synthetic import FAMILIES
from test_logs import is_info

REPO = pathlib.Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow  # the demo and the sweep: whole programs

SHORT = ["--flagfile=experiments/configs/demo.flags", "--num_queries=16",
         "--queries_per_iteration=8", "--eval_size=10", "--demo_warm_queries=100",
         "--demo_warm_epochs=1", "--noprogress"]


def _metrics(path):
  return [json.loads(x) for x in path.read_text().splitlines()]


def test_shortened_demo_runs_end_to_end(tmp_path):
  sweep_dir = tmp_path / "sweep"
  run_dir = sweep_dir / "share0.1_seed0"  # where the sweep below finds it
  tok = tmp_path / "tokenizer"
  cmd = [sys.executable, "experiments/train.py", *SHORT, f"--run_dir={run_dir}",
         f"--tokenizer_dir={tok}"]
  p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200)
  assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
  for phase in ("== warm: sft", "== em: em", "== rl: rl", "== sft: sft"):
    assert phase in p.stdout
  # Quiet by default (autocode_jax.logs): the warm start's checkpoints printed orbax's INFO lines.
  assert not [line for line in p.stderr.splitlines() if is_info(line)], p.stderr[-3000:]
  rows = json.loads((run_dir / "summary.json").read_text())
  assert [(r["method"], r["iteration"]) for r in rows] == [
      (m, i) for m in ("em", "rl", "sft") for i in range(3)]
  for r in rows:
    assert {"cot_acc", "code_acc", "auto_acc", "selection_acc", "invocation_rate", "updates",
            "rollouts"} <= set(r)
  warm = [r for r in rows if r["iteration"] == 0]
  assert len({(r["cot_acc"], r["auto_acc"]) for r in warm}) == 1  # one warm start for all
  # The same rollout budget for EM and RL (2 probes x K=8 = 16 vanilla per query, 8 queries an
  # iteration), none for SFT, and SFT continued for EM's number of updates (8 queries x M=8 in
  # batches of 64: one a pass, one pass an iteration).
  by = {(r["method"], r["iteration"]): r for r in rows}
  assert [by["em", i]["rollouts"] for i in range(3)] == [0, 128, 256]
  assert [by["rl", i]["rollouts"] for i in range(3)] == [0, 128, 256]
  assert [by["sft", i]["rollouts"] for i in range(3)] == [0, 0, 0]
  assert [by["em", i]["updates"] for i in range(3)] == [0, 1, 2]
  assert [by["sft", i]["updates"] for i in range(3)] == [0, 1, 2]
  table = (run_dir / "summary.md").read_text()
  assert table.startswith("Last iteration, auto accuracy: EM (AutoCode4Math) ")
  assert "| method | iteration | updates | rollouts | cot_acc | code_acc | auto_acc |" in table
  assert table in p.stdout
  # EM ran with the decision term (beta = 1): every M-step step reports it, and pi(P|x) moved.
  em = _metrics(run_dir / "em" / "metrics.jsonl")
  steps = [m for m in em if m["kind"] == "mstep"]
  assert len(steps) == 2 and all(m["ce_loss"] > 0 for m in steps)
  # pi(P|x) moved (its log: after this short a warm start pi(P|x) is far below 1e-6).
  assert all(m["decision_logp1"] < 0 and 0 <= m["decision_p1"] <= 1 for m in steps)
  assert steps[0]["decision_logp1"] != steps[1]["decision_logp1"]
  assert all(0 <= m["decision_s1"] <= 1 for m in steps)
  rl = _metrics(run_dir / "rl" / "metrics.jsonl")
  assert not any("ce_loss" in m for m in rl if m["kind"] == "mstep")
  # The same evaluations by task family (2 problems of each of the 5 families).
  fams = json.loads((run_dir / "families.json").read_text())
  stages = ("warm start", "em iter 2", "rl iter 2", "sft iter 2")
  assert [r["stage"] for r in fams] == [s for s in stages for _ in FAMILIES]
  for stage, last in (("em iter 2", by["em", 2]), ("rl iter 2", by["rl", 2]),
                      ("sft iter 2", by["sft", 2])):
    mine = [r for r in fams if r["stage"] == stage]
    assert [r["family"] for r in mine] == list(FAMILIES)
    for key in ("cot_acc", "code_acc", "auto_acc", "invocation_rate"):
      assert abs(sum(r[key] for r in mine) / len(mine) - last[key]) < 1e-9, (stage, key)
  assert "By family" in table
  for png in ("comparison.png", "curves_em.png", "curves_rl.png", "curves_sft.png",
              "invocation_hist.png", "invocation_hist_sampled.png"):
    assert (run_dir / png).read_bytes()[:4] == b"\x89PNG", png

  # The sweep over that one (share, seed) resumes the finished demo and tabulates it.
  cmd = [sys.executable, "experiments/demo_sweep.py", *SHORT, f"--run_dir={sweep_dir}",
         f"--tokenizer_dir={tok}", "--sweep_seeds=0", "--sweep_code_shares=0.1"]
  p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
  assert "iter 1/3" not in p.stdout  # nothing trained again
  sweep = (sweep_dir / "sweep.md").read_text()
  lines = [x for x in sweep.splitlines() if x.startswith("| 0.1 |")]
  assert len(lines) == 2 and lines[0].startswith("| 0.1 | 0 |") and "mean" in lines[1]
  em_auto = f"{100 * by['em', 2]['auto_acc']:.1f}"
  assert lines[0].split(" | ")[4] == em_auto
  assert (sweep_dir / "sweep.png").read_bytes()[:4] == b"\x89PNG"
  assert json.loads((sweep_dir / "sweep.json").read_text())[0]["rows"] == rows


def test_sweep_refuses_bad_flags(tmp_path):
  cmd = [sys.executable, "experiments/demo_sweep.py", *SHORT, f"--run_dir={tmp_path / 's'}",
         f"--tokenizer_dir={tmp_path / 't'}", "--sweep_code_shares=0.1,1.5"]
  p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert p.returncode == 2 and "sweep_code_shares" in p.stderr
  assert not (tmp_path / "s").exists()
  p = subprocess.run(cmd[:-1] + ["--sweep_seeds=0,x"], cwd=REPO, capture_output=True, text=True,
                     timeout=120)
  assert p.returncode == 2 and "--sweep_seeds: expected a comma-separated list" in p.stderr
  assert not (tmp_path / "s").exists()


def _row(method, it, auto, cot=0.5, code=0.5, sel=0.9, union=1.0):
  return {"method": method, "iteration": it, "auto_acc": auto, "cot_acc": cot, "code_acc": code,
          "selection_acc": sel, "invocation_rate": 0.4, "updates": it, "rollouts": 8 * it,
          "union_bound": union, "decided_code_acc": 0.75, "code_there_acc": 1.0}


def test_sweep_table_checks_the_issue_targets():
  from autocode_jax.demo.driver import sweep_table
  # seed 0: EM - RL = 15.0, auto 5.0 under its union bound; seed 1: EM - RL = 5.0, 45 under it
  ok = [_row(m, 0, 0.6) for m in ("em", "rl", "sft")] + [
      _row("em", 1, 0.95), _row("rl", 1, 0.8), _row("sft", 1, 0.6)]
  short = [_row(m, 0, 0.6) for m in ("em", "rl")] + [
      _row("em", 1, 0.55, cot=0.6, sel=0.8), _row("rl", 1, 0.5)]
  table = sweep_table([{"code_share": 0.1, "seed": 0, "rows": ok},
                       {"code_share": 0.1, "seed": 1, "rows": short}])
  lines = table.splitlines()
  assert "| 95.0 | 100.0 |" in lines[2] and "| 75.0 | 100.0 |" in lines[2]
  assert lines[2].endswith("| 15.0 | near union, EM >= RL, sel, auto>both |")
  assert lines[3].endswith("| - | 5.0 | under union, EM >= RL, no sel, auto<=mode |")  # no SFT
  assert lines[4].startswith("| 0.1 | mean | 60.0 |") and "| 75.0 |" in lines[4]
  assert lines[4].endswith("| 10.0 | mean lead |")  # (15 + 5) / 2
  behind = [_row(m, 0, 0.6) for m in ("em", "rl")] + [_row("em", 1, 0.7), _row("rl", 1, 0.75)]
  lines = sweep_table([{"code_share": 0.1, "seed": 2, "rows": behind}]).splitlines()
  assert "under union, EM < RL" in lines[2] and lines[3].endswith("| -5.0 | no mean lead |")
