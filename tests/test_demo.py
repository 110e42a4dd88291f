"""The README's main command, shortened: experiments/configs/demo.flags with a few problems and
a short warm start, end to end (tokenizer, SFT warm start, EM and RL, the comparison)."""

import json
import pathlib
import subprocess
import sys

from autocode_jax.synthetic import FAMILIES

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_shortened_demo_runs_end_to_end(tmp_path):
  run_dir = tmp_path / "demo"
  cmd = [sys.executable, "experiments/train.py", "--flagfile=experiments/configs/demo.flags",
         f"--run_dir={run_dir}", f"--tokenizer_dir={run_dir / 'tokenizer'}", "--num_queries=16",
         "--queries_per_iteration=8", "--eval_size=10", "--demo_warm_queries=100",
         "--demo_warm_epochs=1", "--noprogress"]
  p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200)
  assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
  assert "== warm: sft" in p.stdout and "== em: em" in p.stdout and "== rl: rl" in p.stdout
  rows = json.loads((run_dir / "summary.json").read_text())
  assert [(r["method"], r["iteration"]) for r in rows] == [
      ("em", 0), ("em", 1), ("em", 2), ("rl", 0), ("rl", 1), ("rl", 2)]
  for r in rows:
    assert {"cot_acc", "code_acc", "auto_acc", "selection_acc", "invocation_rate"} <= set(r)
  assert rows[0]["cot_acc"] == rows[3]["cot_acc"]  # both start from the one warm start
  table = (run_dir / "summary.md").read_text()
  assert table.startswith("| method | iteration | cot_acc | code_acc | auto_acc |")
  assert table in p.stdout
  # The same evaluations by task family (2 problems of each of the 5 families).
  fams = json.loads((run_dir / "families.json").read_text())
  assert [r["stage"] for r in fams] == [s for s in ("warm start", "em iter 2", "rl iter 2")
                                        for _ in FAMILIES]
  for stage, last in (("em iter 2", rows[2]), ("rl iter 2", rows[5])):
    mine = [r for r in fams if r["stage"] == stage]
    assert [r["family"] for r in mine] == list(FAMILIES)
    for key in ("cot_acc", "code_acc", "auto_acc", "invocation_rate"):
      assert abs(sum(r[key] for r in mine) / len(mine) - last[key]) < 1e-9, (stage, key)
  assert "By family" in table
  for png in ("curves_em.png", "curves_rl.png", "invocation_hist.png",
              "invocation_hist_sampled.png"):
    assert (run_dir / png).read_bytes()[:4] == b"\x89PNG"
  # The same rollout budget per query: EM 2 probes x K=4, RL 8 vanilla rollouts.
  em = [json.loads(x) for x in (run_dir / "em" / "metrics.jsonl").read_text().splitlines()]
  rl = [json.loads(x) for x in (run_dir / "rl" / "metrics.jsonl").read_text().splitlines()]
  per_query = lambda ms: {m["rollouts"] / m["queries"] for m in ms if m["kind"] == "estep"}
  assert per_query(em) == per_query(rl) == {8.0}
