"""The E-step driver with known rollouts: a rollout session over a scripted engine (beside the
real-sampler runs of test_em_loop.py) with the real tokenizer, sandbox and grader. Statistics are
checked against values computed by hand; resume after a cut-short chunk; branching; the rl and
sft data; evaluation rows through the same session."""

import dataclasses
import json
import math
import time

import numpy as np
import pytest

from autocode_jax.data.dtrain import read_dtrain, read_records
from autocode_jax.data.records import Query, SftExample
from autocode_jax.data.sft import sft_records
from autocode_jax.em import estep, explore
from autocode_jax.em.config import RunConfig
from autocode_jax.files import DataError, read_jsonl
from autocode_jax.grading.pool import GraderPool
from autocode_jax.interpreter import Sandbox
from autocode_jax.models import load_tokenizer
from autocode_jax.rollout.session import RolloutSession, RolloutSettings
from autocode_jax.rollout.tool_loop import fence_token_ids
from autocode_jax.training.step import LossConfig

from scripted import EOS, ScriptedPolicy

Q1 = Query("q1", "What is 6 times 7?", "42", None, "math500")
Q2 = Query("q2", "What is 2 plus 3?", "5", None, "math500")
PLAIN_WRONG = "I think it is \\boxed{41}."
CODE_RIGHT = "Compute.\n```python\nprint(6 * 7)\n```\nSo \\boxed{42}."
PLAIN_RIGHT = "Two plus three: \\boxed{5}."
CODE_ERROR = "Try.\n```python\nprint(1/0)\n```\nThen \\boxed{6}."


def choose(text, index, params):
  """q1: vanilla alternates plain-wrong / code-right, code_prefix always code-right.
  q2: vanilla always plain-right, code_prefix always code that errors and answers wrong."""
  coded = "consider if python code could help" in text
  if params.banned_token_ids:
    return "No code here: \\boxed{42}."
  if "6 times 7" in text:
    if "Compute." in text:  # a branch from just before the code block: continue the script
      return CODE_RIGHT[len(text[text.index("Compute."):]):]
    return CODE_RIGHT if coded or index % 2 else PLAIN_WRONG
  return CODE_ERROR if coded else PLAIN_RIGHT


@pytest.fixture(scope="module")
def tok(shared_dir):
  return load_tokenizer(str(shared_dir / "data" / "tokenizers" / "qwen2.5" / "derived"))


@pytest.fixture(scope="module")
def parts(tok):
  sandbox, grader = Sandbox(num_workers=2, timeout_s=2.0), GraderPool(num_workers=2)
  yield sandbox, grader, fence_token_ids(tok)
  sandbox.close()
  grader.close()


def _cfg(**cfg):
  return RunConfig(**{"run_dir": "unused", "model_preset": "tiny-qwen2",
                      "tokenizer_dir": "unused", "k": 4, "max_tokens": 200, "rollout_chunk": 1,
                      **cfg})


def _session(tok, parts, cfg, pick=choose):
  """A session as rollout.session.open_session makes it, over a scripted engine."""
  sandbox, grader, fences = parts
  return RolloutSession(ScriptedPolicy(tok, pick), sandbox, tok, grader, cfg.template, cfg.seed,
                        cfg.rollout.max_tool_calls, cfg.rollout.grade_timeout_s, (EOS,), fences)


def _estep(tok, parts, queries, iteration, out_dir, shard="", **changes):
  """run_estep under _cfg(**changes); returns the session (its engine saw the rollouts)."""
  cfg = _cfg(**changes)
  session = _session(tok, parts, cfg)
  explore.run_estep(session, cfg, queries, iteration, str(out_dir), shard)
  return session


def _softmax(a, b):
  return math.exp(a) / (math.exp(a) + math.exp(b))


def test_statistics_and_d_train_match_hand_computed_values(tok, parts, tmp_path):
  _estep(tok, parts, [Q1, Q2], 0, tmp_path, ".p0")
  stats = {s["query_id"]: s for s in read_jsonl(str(tmp_path / "queries.p0.jsonl"))}
  # q1: vanilla labels 0,1,0,1 (rewards equal labels); code_prefix: 4 x (c=1, r=1).
  s = stats["q1"]
  assert s["labels"] == {"vanilla": [0, 1, 0, 1], "code_prefix": [1, 1, 1, 1]}
  assert s["rewards"] == {"vanilla": [0, 1, 0, 1], "code_prefix": [1, 1, 1, 1]}
  assert s["pi1"] == pytest.approx(3 / 6)           # (2 + 1) / (4 + 2)
  assert s["q"] == pytest.approx([0.0, 1.0])        # Q(x,0) = 0/2, Q(x,1) = 6/6
  assert s["s_star"][1] == pytest.approx(_softmax(4 * 0.5 * 1.0, 4 * 0.5 * 0.0))
  assert s["tool_statuses"] == {"ok": 6}
  # q2: vanilla 4 x (c=0, r=1); code_prefix 4 x (c=1, r=0, status error).
  s = stats["q2"]
  assert s["pi1"] == pytest.approx(1 / 6)
  assert s["q"] == pytest.approx([1.0, 0.0])
  assert s["s_star"][0] == pytest.approx(_softmax(4 * 5 / 6, 0.0))
  assert s["tool_statuses"] == {"error": 4}
  assert s["seeds"]["vanilla"] != s["seeds"]["code_prefix"]

  records = read_jsonl(str(tmp_path / "dtrain.p0.jsonl"))
  assert [r["query_id"] for r in records] == ["q1"] * 4 + ["q2"] * 4  # M = K per query
  for r in records:
    assert len(r["token_ids"]) == len(r["roles"]) == len(r["logprobs"])
    assert r["text"] == tok.decode(r["token_ids"])
    assert r["label"] == int("```output" in r["text"]) and r["reward"] in (0.0, 1.0)
    if r["probe"] == "code_prefix":
      n = len(tok.encode("Let's first analyze the problem, then consider if python code could "
                         "help."))
      assert r["roles"][:n] == "p" * n
    assert set(r["roles"]) <= {"p", "m", "t"} and ("t" in r["roles"]) == bool(r["label"])
    assert r["s_star"] == stats[r["query_id"]]["s_star"] and r["group"] == r["query_id"]
    # The decision row's P: exactly the tokens the code_prefix probe starts its rollouts with.
    assert r["decision_ids"] == tok.encode("Let's first analyze the problem, then consider if "
                                           "python code could help.")
  for q in ("q1", "q2"):
    rs = [r for r in records if r["query_id"] == q]
    np.testing.assert_allclose([r["advantage"] for r in rs],
                               estep.advantages([r["reward"] for r in rs]), atol=1e-9)

  it = explore.iteration_stats(list(stats.values()),
                               read_records(str(tmp_path / "dtrain.p0.jsonl")))
  assert it["code_rate_mean"] == pytest.approx((2 / 4 + 0 / 4) / 2)
  assert it["code_rate_hist"] == [1, 0, 1, 0, 0]
  assert it["tool_statuses"] == {"ok": 6, "error": 4} and it["rollouts"] == 16
  assert it["reward/vanilla"] == pytest.approx(6 / 8)
  assert it["reward/code_prefix"] == pytest.approx(4 / 8)
  assert it["reward/c1"] == pytest.approx(6 / 10) and it["reward/c0"] == pytest.approx(4 / 6)


def test_subsample_follows_s_star_over_many_queries(tok, parts, tmp_path):
  """q1's s*(1) = 0.881: over 60 copies of q1 (M = 4 each), the D_train code share matches it,
  and q2's (s*(1) = 0.034) matches its own."""
  qs = [dataclasses.replace(Q1, id=f"a{i}") for i in range(60)]
  qs += [dataclasses.replace(Q2, id=f"b{i}") for i in range(60)]
  _estep(tok, parts, qs, 0, tmp_path, rollout_chunk=30)
  records = read_jsonl(str(tmp_path / "dtrain.jsonl"))
  share = lambda p: np.mean([r["label"] for r in records if r["query_id"].startswith(p)])
  s1 = _softmax(2.0, 0.0)
  assert abs(share("a") - s1) < 4 * math.sqrt(s1 * (1 - s1) / 240)
  s2 = 1 - _softmax(4 * 5 / 6, 0.0)
  assert abs(share("b") - s2) < 4 * math.sqrt(s2 * (1 - s2) / 240) + 0.01


def test_resume_redoes_only_the_chunk_cut_short(tok, parts, tmp_path):
  whole = tmp_path / "whole"
  _estep(tok, parts, [Q1, Q2], 0, whole)
  cut = tmp_path / "cut"
  _estep(tok, parts, [Q1], 0, cut)
  # A crash during q2's chunk: its D_train lines are on disk (one torn), its stats line is not.
  q2_lines = [line for line in (whole / "dtrain.jsonl").read_text().splitlines(True)
              if '"q2"' in line]
  with open(cut / "dtrain.jsonl", "a") as f:
    f.write(q2_lines[0] + q2_lines[1][:30])
  engine = _estep(tok, parts, [Q1, Q2], 0, cut).engine
  assert engine.new_rows and all("2 plus 3" in tok.decode(list(k)) for k in engine.new_rows)
  strip = lambda p: [{k: v for k, v in r.items() if k != "elapsed_s"}
                     for r in read_jsonl(str(p))]
  assert strip(cut / "dtrain.jsonl") == strip(whole / "dtrain.jsonl")
  assert strip(cut / "queries.jsonl") == strip(whole / "queries.jsonl")


def test_a_torn_d_train_resumes_and_a_corrupt_field_is_refused(tok, parts, tmp_path):
  """A D_train file cut mid-line (a crash while appending) resumes; one whose line has a field
  of the wrong type (or no such field) is refused, naming the file, the line and the field,
  and nothing on disk is changed."""
  whole = tmp_path / "whole"
  _estep(tok, parts, [Q1, Q2], 0, whole)
  run = tmp_path / "run"
  _estep(tok, parts, [Q1], 0, run)
  path = run / "dtrain.jsonl"
  with open(path, "a") as f:  # q2's chunk torn: half a line, no stats line
    f.write([line for line in (whole / "dtrain.jsonl").read_text().splitlines(True)
             if '"q2"' in line][0][:50])
  assert len(read_records(str(path))) == 4  # the torn line is not a record
  _estep(tok, parts, [Q1, Q2], 0, run)
  assert read_records(str(path)) == read_records(str(whole / "dtrain.jsonl"))
  lines = path.read_text().splitlines(True)
  for line, field, corrupt in ((3, "advantage", lambda o: o.update(advantage="high")),
                               (6, "token_ids", lambda o: o.pop("token_ids")),
                               (2, "rollout", lambda o: o.update(rollout=1))):
    obj = json.loads(lines[line - 1])
    corrupt(obj)
    path.write_text("".join(lines[:line - 1] + [json.dumps(obj) + "\n"] + lines[line:]))
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(DataError, match=f"^{path}:{line}: .*'{field}'"):
      _estep(tok, parts, [Q1, Q2], 0, run)
    with pytest.raises(DataError, match=f"^{path}:{line}: .*'{field}'"):
      read_dtrain(str(run))  # the M-step's reading
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing lost


def test_branching_from_the_first_code_block(tok, parts, tmp_path):
  _estep(tok, parts, [Q1], 1, tmp_path, branching=True, k_branch=2)
  records = read_jsonl(str(tmp_path / "dtrain.jsonl"))
  branch = [r for r in records if r["probe"].startswith("branch")]
  groups = {r["group"] for r in branch}
  assert len(branch) == 2 and len(groups) == 1 and groups.pop().startswith("q1#branch")
  stats = read_jsonl(str(tmp_path / "queries.jsonl"))[0]["branches"][0]
  # Allowed continuations run the code and are right (c=1, r=1); banned ones are plain and
  # answer 42 too (c=0, r=1): pi at the branch = (2 + 1) / (2 + 2), Q = (1, 1).
  assert stats["labels"] == [1, 1, 0, 0] and stats["rewards"] == [1, 1, 1, 1]
  assert stats["pi1"] == pytest.approx(0.75) and stats["q"] == pytest.approx([1.0, 1.0])
  assert stats["s_star"][1] == pytest.approx(_softmax(4 * 0.75, 4 * 0.25))
  for r in branch:
    ctx = tok.decode(r["prompt_ids"])
    assert ctx.rstrip().endswith("Compute.") and "`" not in ctx  # y<t: up to the code block
    # The branch's decision: the fence that opened the original block, after y<t.
    assert tok.decode(r["decision_ids"]).strip() == "```python"
    assert r["advantage"] == 0.0  # equal rewards
  # The first iteration never branches.
  _estep(tok, parts, [Q1], 0, tmp_path / "it0", branching=True, k_branch=2)
  assert not any(r["probe"].startswith("branch")
                 for r in read_jsonl(str(tmp_path / "it0" / "dtrain.jsonl")))


def test_the_branch_points_of_a_chunk_roll_out_together(tok, parts, tmp_path):
  """Every branch point of a chunk goes through the tool loop in two calls (code allowed, code
  banned), and each point's continuations and records are those it gets alone."""
  cfg = _cfg(branching=True, k_branch=2, rollout_chunk=2)
  session = _session(tok, parts, cfg)
  calls, roll_out = [], session.roll_out
  session.roll_out = lambda reqs, params, **kw: calls.append(len(reqs)) or roll_out(
      reqs, params, **kw)
  explore.run_estep(session, cfg, [Q1, Q2], 1, str(tmp_path / "both"))
  stats = read_jsonl(str(tmp_path / "both" / "queries.jsonl"))
  assert [len(s["branches"]) for s in stats] == [1, 1]
  assert calls == [4, 2, 2]  # 2 queries x 2 probes; then 2 points with code, 2 without
  _estep(tok, parts, [Q1], 1, tmp_path / "q1", branching=True, k_branch=2, rollout_chunk=2)

  def branch_records(run):
    return [(r["query_id"], r["group"], r["token_ids"], r["label"], r["reward"],
             r["advantage"]) for r in read_jsonl(str(tmp_path / run / "dtrain.jsonl"))
            if r["query_id"] == "q1" and r["probe"].startswith("branch")]

  assert branch_records("both") == branch_records("q1") and branch_records("q1")


def test_a_trajectory_is_graded_as_soon_as_it_ends(tok, parts):
  """q2's rollout ends in the first engine call; q1's goes on through three more (a stray
  backtick ends each, 0.3 s apiece). roll_out(grade=...) grades q2's in the real grader while
  q1's still rolls out, and returns both graded as session.grade grades them."""
  stray = "Hm " + " ".join(["`"] * 3) + " so \\boxed{42}."
  session = _session(tok, parts, _cfg(), pick=lambda text, index, params: (
      stray if "6 times 7" in text else PLAIN_RIGHT))
  calls, graded, generate, grade = [], {}, session.engine.generate, session.grade

  def slow(*a, **kw):
    calls.append(time.monotonic())
    time.sleep(0.3)
    return generate(*a, **kw)

  def timed(trajs, queries):
    graded[trajs[0].query_id] = time.monotonic()
    grade(trajs, queries)

  session.engine.generate, session.grade = slow, timed
  reqs = [session.request(q, "vanilla", 0) for q in (Q1, Q2)]
  params = session.params(n=1, temperature=0.0, top_p=1.0, max_tokens=200)
  trajs = session.roll_out(reqs, params, grade={"q1": Q1, "q2": Q2})
  assert len(calls) == 4 and set(graded) == {"q1", "q2"}
  assert calls[0] < graded["q2"] < calls[2]  # after its call, before q1's last two
  assert graded["q1"] > calls[3]
  assert [(t.query_id, t.reward, t.grade_failure) for t in trajs] == [
      ("q1", 1.0, None), ("q2", 1.0, None)]
  again = session.roll_out(reqs, params)
  assert [t.reward for t in again] == [None, None]
  grade(again, {"q1": Q1, "q2": Q2})
  assert [t.reward for t in again] == [t.reward for t in trajs]
  with pytest.raises(ValueError, match=r"grade has no query for \['q2'\]"):
    session.roll_out(reqs, params, grade={"q1": Q1})


def test_first_code_fence(tok):
  ids = tok.encode("Compute.\n```python\nprint(1)\n```")
  start, end = explore.first_code_fence(tok, ids)
  assert "`" not in tok.decode(ids[:start]) and "`" in tok.decode(ids[:start + 1])
  assert "```python" in tok.decode(ids[:end]) and "```python" not in tok.decode(ids[:end - 1])
  assert explore.first_code_fence(tok, tok.encode("no code")) is None


def test_rl_keeps_every_vanilla_rollout(tok, parts, tmp_path):
  _estep(tok, parts, [Q1, Q2], 0, tmp_path, algorithm="rl", loss=LossConfig(ce_coef=0.0))
  records = read_jsonl(str(tmp_path / "dtrain.jsonl"))
  assert [r["probe"] for r in records] == ["vanilla"] * 8
  assert [r["label"] for r in records] == [0, 1, 0, 1, 0, 0, 0, 0]
  np.testing.assert_allclose([r["advantage"] for r in records[:4]], [-1, 1, -1, 1], atol=1e-5)
  assert [r["advantage"] for r in records[4:]] == [0.0] * 4


def test_sft_records_mask_output_blocks(tok):
  sol = "Run it.\n```python\nprint(42)\n```\n```output\n42\n```\nSo \\boxed{42}."
  (r,) = sft_records(tok, "chat", [SftExample(Q1, sol)], 0, EOS)
  tool = "".join(tok.decode([i]) for i, c in zip(r.token_ids, r.roles) if c == "t")
  assert tool == "```output\n42\n```\n"
  assert r.token_ids[-1] == EOS and r.roles[-1] == "m" and r.label == 1
  assert tok.decode(r.token_ids[:-1]) == sol
  with pytest.raises(ValueError, match="q1 of math500 has no solution"):
    sft_records(tok, "chat", [SftExample(Q1, "")], 0, EOS)


TOWER = "So \\boxed{10^{10^{10^{10}}}}."  # comparing it with 1 takes far past the limit


def test_grader_timeouts_are_counted_in_the_e_step_and_in_eval(tok, parts, tmp_path):
  """A response the grader cannot finish within grade_timeout_s scores 0 and is counted: in
  the query's stats line, the iteration's E-step statistics and line, and the eval rows and
  analysis."""
  from autocode_jax.em.loop import summary_line
  from autocode_jax.grading.metrics import autocode_analysis, result_rows
  cfg = _cfg(rollout=RolloutSettings(grade_timeout_s=1.0))
  one = Query("q3", "What is one?", "1", None, "math500")
  pick = lambda text, index, params: TOWER if index % 2 == 0 else "It is \\boxed{1}."
  explore.run_estep(_session(tok, parts, cfg, pick), cfg, [one], 0, str(tmp_path))
  stats = read_jsonl(str(tmp_path / "queries.jsonl"))
  # Rollouts 0 and 2 of each probe time out: 2 probes x 2.
  assert stats[0]["grader_failures"] == {"timeout": 4, "error": 0}
  assert stats[0]["rewards"] == {"vanilla": [0, 1, 0, 1], "code_prefix": [0, 1, 0, 1]}
  it = explore.iteration_stats(stats, read_records(str(tmp_path / "dtrain.jsonl")))
  assert (it["grader_timeouts"], it["grader_errors"]) == (4, 0)
  line = summary_line(0, 1, {"estep": dict(it, rollouts_per_s=1.0)})
  assert "grader 4 timeouts 0 errors" in line

  rows = result_rows(_session(tok, parts, cfg, pick).roll_out_modes([one], ["cot", "auto"],
                                                                   max_tokens=200), "eval")
  assert [(r["mode"], r["sample"], r["tag"]) for r in rows] == [("cot", 0, "eval"),
                                                                 ("auto", 0, "eval")]
  assert [r["grader_failure"] for r in rows] == ["timeout", "timeout"]
  assert [r["correct"] for r in rows] == [0, 0]
  analysis = autocode_analysis(rows)
  assert (analysis["grader_timeouts"], analysis["grader_errors"]) == (2, 0)
