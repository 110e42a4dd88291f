"""The tool loop: exact cases with a scripted engine (real tokenizer, real sandbox), and an
end-to-end run with the real tiny model and JaxSampler."""

import time

import numpy as np
import pytest

from autocode_jax.interpreter import Sandbox
from autocode_jax.models import init_model, load_tokenizer, preset
from autocode_jax.rollout import JaxSampler, SamplingParams
from autocode_jax.rollout.session import RolloutSession
from autocode_jax.rollout.tool_loop import (ROLES, Request, code_cells, fence_token_ids,
                                            output_block, run_tool_loop)

from scripted import EOS, ScriptedPolicy


@pytest.fixture(scope="module")
def tok(shared_dir):
  return load_tokenizer(str(shared_dir / "data" / "tokenizers" / "qwen2.5" / "derived"))


@pytest.fixture(scope="module")
def fences(tok):
  return fence_token_ids(tok)


@pytest.fixture(scope="module")
def sandbox():
  with Sandbox(num_workers=2, timeout_s=1.0) as sb:
    yield sb


def _run(tok, fences, sandbox, scripts, max_tool_calls=4, prefix=""):
  # The prompt is the script's key; the code-probe prefix, if any, follows it.
  engine = ScriptedPolicy(tok, lambda text, index, params: next(
      v for k, v in scripts.items() if text.startswith(k)))
  reqs = [Request(p, tuple(tok.encode(p)), tuple(tok.encode(prefix)) if prefix else (),
                  "code_prefix" if prefix else "vanilla") for p in scripts]
  params = SamplingParams(temperature=0, max_tokens=400, stop_token_ids=(EOS,))
  trajs = run_tool_loop(engine, sandbox, tok, reqs, params, max_tool_calls=max_tool_calls,
                        fence_ids=fences)
  return {t.query_id: t for t in trajs}


def _check_invariants(tok, t):
  assert len(t.token_ids) == len(t.roles) == len(t.logprobs)
  assert set(t.roles) <= set(ROLES)
  assert all(lp == 0.0 for lp, r in zip(t.logprobs, t.roles) if r != "model")
  assert t.text == tok.decode(t.token_ids)


def test_block_that_raises_and_block_that_prints_nothing(tok, fences, sandbox):
  scripts = {
      "Q1": "Let me compute.\n```python\nprint(1/0)\n```\nSo it is undefined: \\boxed{0}.",
      "Q2": "Store it.\n```python\nx = 5\n```\nNothing printed, \\boxed{5}.",
  }
  t = _run(tok, fences, sandbox, scripts)
  q1, q2 = t["Q1"], t["Q2"]
  for x in (q1, q2):
    _check_invariants(tok, x)
    assert x.label == 1 and x.num_tool_calls == 1 and x.stop_reason == "eos"
  assert q1.tool_statuses == ["error"]
  assert "```output\nZeroDivisionError: division by zero\n```\n" in q1.text
  assert q1.text.endswith("So it is undefined: \\boxed{0}.<|endoftext|>")
  assert q2.tool_statuses == ["ok"] and "```output\n\n```\n" in q2.text
  # The tool tokens are the output block tokenised on its own, spliced in unchanged.
  tool = [i for i, r in zip(q1.token_ids, q1.roles) if r == "tool"]
  assert tool == tok.encode(output_block("ZeroDivisionError: division by zero", "```\n"))


def test_block_that_times_out(tok, fences, sandbox):
  t = _run(tok, fences, sandbox, {"Q": "```python\nwhile True:\n    pass\n```\nToo slow."})["Q"]
  _check_invariants(tok, t)
  assert t.tool_statuses == ["timeout"]
  assert "```output\nTimeoutError: execution exceeded 1 s\n```" in t.text


def test_two_blocks_share_state(tok, fences, sandbox):
  script = ("First.\n```python\nx = 6\nprint(x)\n```\nThen.\n```python\nprint(x * 7)\n```\n"
            "\\boxed{42}")
  t = _run(tok, fences, sandbox, {"Q": script})["Q"]
  _check_invariants(tok, t)
  assert t.tool_statuses == ["ok", "ok"]
  assert "```output\n6\n```" in t.text and "```output\n42\n```" in t.text
  assert code_cells(t.text) == ["x = 6\nprint(x)\n", "print(x * 7)\n"]


def test_max_tool_calls_and_no_code(tok, fences, sandbox):
  script = "```python\nprint(1)\n```\n```python\nprint(2)\n```\ndone"
  t = _run(tok, fences, sandbox, {"Q": script, "P": "Plain reasoning: \\boxed{3}"},
           max_tool_calls=1)
  assert t["Q"].tool_statuses == ["ok"] and "```output\n2" not in t["Q"].text
  assert t["P"].label == 0 and "tool" not in t["P"].roles
  _check_invariants(tok, t["Q"])


def test_code_prefix_tokens_have_the_prefix_role(tok, fences, sandbox):
  prefix = "Let's first analyze the problem, then consider if python code could help."
  t = _run(tok, fences, sandbox, {"Q": " Sure.\n```python\nprint(2+2)\n```\n\\boxed{4}"},
           prefix=prefix)["Q"]
  n = len(tok.encode(prefix))
  assert t.roles[:n] == ["prefix"] * n and t.probe == "code_prefix"
  assert t.tool_statuses == ["ok"] and "```output\n4\n```" in t.text


def test_real_tiny_model_end_to_end(tok, fences, sandbox):
  cfg = preset("tiny-qwen2").replace(vocab_size=151936)
  sampler = JaxSampler(init_model(cfg, seed=1))
  prompt = tok.encode("What is 6 * 7?")
  prefix = tok.encode("```python\nprint(6 * 7)\n")
  reqs = [Request("q", tuple(prompt), tuple(prefix), "code_prefix")]
  params = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=24, n=2, seed=3,
                          stop_token_ids=(EOS,))
  trajs = run_tool_loop(sampler, sandbox, tok, reqs, params)
  assert len(trajs) == 2 and trajs[0].token_ids != trajs[1].token_ids
  for t in trajs:
    _check_invariants(tok, t)
    assert t.roles[:len(prefix)] == ["prefix"] * len(prefix)
    assert len(t.token_ids) <= 24 and t.stop_reason in ("eos", "length")
    # Whatever the random model wrote, the sampled tokens carry their sampler log-probs.
    assert all(lp < 0 for lp, r in zip(t.logprobs, t.roles) if r == "model")
  # Greedy is reproducible through the loop.
  g = dict(params.__dict__, temperature=0.0, n=1)
  a = run_tool_loop(sampler, sandbox, tok, reqs, SamplingParams(**g))[0]
  b = run_tool_loop(sampler, sandbox, tok, reqs, SamplingParams(**g))[0]
  assert a.token_ids == b.token_ids


def test_seeded_requests_do_not_depend_on_their_batch(tok, fences, sandbox):
  sampler = JaxSampler(init_model(preset("tiny-qwen2").replace(vocab_size=151936), seed=2))
  reqs = [Request(q, tuple(tok.encode(q)), seed=s)
          for q, s in (("What is 2+2?", 5), ("Compute 3*3.", 6), ("Find 10-1.", 7))]
  params = SamplingParams(temperature=1.0, max_tokens=16, n=2, stop_token_ids=(EOS,))
  together = run_tool_loop(sampler, sandbox, tok, reqs, params, fence_ids=fences)
  alone = run_tool_loop(sampler, sandbox, tok, reqs[1:2], params, fence_ids=fences)
  assert [t.token_ids for t in together[2:4]] == [t.token_ids for t in alone]
  assert together[2].token_ids != together[3].token_ids  # the n samples differ
  with pytest.raises(ValueError, match="every request has a seed or none"):
    run_tool_loop(sampler, sandbox, tok, [reqs[0], Request("x", (1, 2))], params,
                  fence_ids=fences)


def test_fence_tokens(tok, fences):
  assert len(fences) > 5
  assert all("`" in tok.decode([i]) for i in fences)
  assert set(tok.encode("```")) <= set(fences)


def test_per_trajectory_loop_equals_the_rounds_and_prefills_no_token_twice(tok, fences,
                                                                           sandbox):
  """The real tiny model, sampling only among a few tokens (fences, newlines, print(1)), so
  that blocks close, cells run and backticks that close nothing continue: the per-trajectory
  loop (KV continuation, cells concurrent with decoding) gives the round-based loop's
  trajectories (tokens, roles, tool statuses identical; log-probs within 1e-4), and its slots
  prefilled exactly the prompt and tool-output tokens."""
  sampler = JaxSampler(init_model(preset("tiny-qwen2").replace(vocab_size=151936), seed=4))
  allowed = set(tok.encode("```\nprint(1)\n```")) | set(tok.encode("``")) | {EOS}
  banned = tuple(i for i in range(151936) if i not in allowed)
  prefix = tuple(tok.encode("```python\nprint(1)\n"))
  reqs = [Request(q, tuple(tok.encode(q)), prefix, "code_prefix", seed=s)
          for q, s in (("What is 1?", 11), ("One?", 12), ("Say 1.", 13))]
  params = SamplingParams(temperature=1.0, max_tokens=64, n=4, stop_token_ids=(EOS,),
                          banned_token_ids=banned)
  rounds = run_tool_loop(sampler, sandbox, tok, reqs, params, max_tool_calls=2, rounds=True)
  before = sampler.prefilled_tokens
  own = run_tool_loop(sampler, sandbox, tok, reqs, params, max_tool_calls=2, rounds=False)
  assert sum(t.num_tool_calls for t in own) >= 4  # cells ran
  for a, b in zip(own, rounds):
    _check_invariants(tok, a)
    assert (a.token_ids, a.roles, a.tool_statuses, a.stop_reason) == \
        (b.token_ids, b.roles, b.tool_statuses, b.stop_reason)
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-4)
  prompts = sum(len(t.prompt_ids) + len(prefix) for t in own)
  tools = sum(r == "tool" for t in own for r in t.roles)
  assert tools > 0 and sampler.prefilled_tokens - before == prompts + tools
  # The session rolls out the same way (each trajectory on its own, from its slot).
  session = RolloutSession(sampler, sandbox, tok, None, "plain", 0, 2, 5.0, (EOS,), fences)
  before = sampler.prefilled_tokens
  got = session.roll_out(reqs, params)
  assert [t.token_ids for t in got] == [t.token_ids for t in own]
  assert sampler.prefilled_tokens - before == prompts + tools


class _Unsynchronised:
  """GenerateBatch made per-trajectory (not synchronous) and slow (each run takes `dt` more);
  it records after how many runs each resume came."""

  synchronous = False

  def __init__(self, inner, dt):
    self.inner, self.dt, self.runs, self.resumes = inner, dt, 0, []

  @property
  def busy(self):
    return self.inner.busy

  def submit(self, *a, **kw):
    self.inner.submit(*a, **kw)

  def release(self, rid):
    self.inner.release(rid)

  def resume(self, rid, tokens, **kw):
    self.resumes.append((rid, len(tokens), self.runs))
    self.inner.resume(rid, tokens, **kw)

  def run(self):
    time.sleep(self.dt)
    self.runs += 1
    return self.inner.run()


def test_cell_wait_lets_a_trajectory_join_the_next_decode_call(tok, fences, sandbox):
  """Trajectory A closes a block (its cell sleeps 50 ms) while B goes on, stopping on a stray
  backtick every engine call (500 ms each). Without cell_wait A's cell is still running
  when the engine decodes on, so A resumes one call later; with cell_wait=1 the loop waits for
  it (up to one call's time) and A resumes before the next call. The trajectories are the same
  either way."""
  scripts = {"A": "Compute.\n```python\nimport time\ntime.sleep(0.05)\nprint(7)\n```\nSo 7.",
             "B": "Think " + " ".join(["`"] * 6) + " done."}
  got = {}
  for wait in (0.0, 1.0):
    engine = ScriptedPolicy(tok, lambda text, index, params: next(
        v for k, v in scripts.items() if text.startswith(k)))
    reqs = [Request(p, tuple(tok.encode(p))) for p in scripts]
    batches = []
    wrap = lambda b: batches.append(_Unsynchronised(b, 0.5)) or batches[-1]
    trajs = run_tool_loop(engine, sandbox, tok, reqs,
                          SamplingParams(temperature=0, max_tokens=200, stop_token_ids=(EOS,)),
                          fence_ids=fences, cell_wait=wait, wrap=wrap)
    (batch,) = batches
    a_resume = [r for r in batch.resumes if r[0] == 0 and r[1] > 0]  # A's tool output
    assert len(a_resume) == 1 and trajs[0].tool_statuses == ["ok"]
    got[wait] = a_resume[0][2], [t.token_ids for t in trajs]
  # A's block closes in some call c (after stray stops on its opening fence): with the wait it
  # resumes right after c, without it after c + 1.
  assert got[0.0][0] == got[1.0][0] + 1, (got[0.0][0], got[1.0][0])
  assert got[0.0][1] == got[1.0][1]
