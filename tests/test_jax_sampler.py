"""JaxSampler: greedy parity with transformers' generate, the sampling distribution, stop
sequences, determinism, bucket reuse and mesh sharding."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from flax import nnx

from autocode_jax.models import from_pretrained, make_mesh, shard_state
from autocode_jax.rollout import JaxSampler, SamplingParams
from autocode_jax.rollout.sampling import filter_logits, sample_tokens, stop_hit
from hf_fixtures import save_tiny

PROMPTS = [[5, 17, 33, 2, 9], [100, 3], [7, 8, 9, 10, 11, 12, 13], [250]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  d = tmp_path_factory.mktemp("tiny")
  hf = save_tiny("qwen2-untied-kv2", d)
  return hf, from_pretrained(str(d))


def test_greedy_equals_transformers_generate(tiny):
  hf, model = tiny
  sampler = JaxSampler(model)
  results = sampler.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=16))
  for prompt, (comp,) in zip(PROMPTS, results):
    with torch.no_grad():
      ref = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=16,
                        eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    assert list(comp.token_ids) == ref
    assert comp.stop_reason == "length" and len(comp.logprobs) == 16
  # The log-probs are the raw model's: check one against a full forward.
  p, comp = PROMPTS[0], results[0][0]
  full = jnp.asarray([p + list(comp.token_ids)])
  logp = jax.nn.log_softmax(model(full)[0])
  want = [float(logp[len(p) - 1 + j, t]) for j, t in enumerate(comp.token_ids)]
  np.testing.assert_allclose(comp.logprobs, want, atol=1e-4)


def test_sampled_frequencies_match_the_top_p_softmax():
  logits = jnp.log(jnp.array([0.35, 0.25, 0.15, 0.1, 0.08, 0.04, 0.02, 0.01]))
  top_p, n = 0.8, 40_000
  keys = jax.random.split(jax.random.PRNGKey(0), n)
  draws = jax.vmap(lambda k: sample_tokens(logits[None], k[None], 1.0, top_p, 0)[0])(keys)
  counts = np.bincount(np.asarray(draws), minlength=8)
  # The nucleus: the smallest prefix of the sorted tokens with mass >= 0.8 -> tokens 0..3.
  p = np.array([0.35, 0.25, 0.15, 0.1])
  expected = n * p / p.sum()
  assert counts[4:].sum() == 0
  chi2 = float(((counts[:4] - expected) ** 2 / expected).sum())
  assert chi2 < 16.27, (chi2, counts)  # chi-square, 3 degrees of freedom, p = 0.001


def test_gumbel_noise_is_uniform_over_a_vocabulary_and_independent_per_row():
  """The counter-hash noise: draws from equal logits are uniform over 512 tokens, and a row's
  noise is a function of its own key (another row's key changes it entirely)."""
  from autocode_jax.rollout.sampling import gumbel_noise
  v, n = 512, 51_200
  keys = jax.random.split(jax.random.PRNGKey(3), n)
  draws = jnp.argmax(gumbel_noise(keys, v), axis=-1)
  counts = np.bincount(np.asarray(draws), minlength=v)
  expected = n / v
  chi2 = float(((counts - expected) ** 2 / expected).sum())
  assert chi2 < 640.0, chi2  # 511 degrees of freedom: mean 511, sd 32; p ~ 1e-4
  g = np.asarray(gumbel_noise(keys[:2], v))
  assert abs(g.mean() - 0.5772) < 0.1 and abs(g.std() - 1.2825) < 0.15  # Gumbel(0, 1)
  assert np.corrcoef(g[0], g[1])[0, 1] < 0.2
  again = np.asarray(gumbel_noise(keys[1:3], v))
  np.testing.assert_array_equal(again[0], g[1])  # the same key, the same noise, in any batch


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_static_greedy_flag_draws_what_the_device_choice_draws(temperature):
  logits = jax.random.normal(jax.random.PRNGKey(1), (16, 64)) * 3
  keys = jax.random.split(jax.random.PRNGKey(2), 16)
  on_device = sample_tokens(logits, keys, temperature, 0.9, 0)
  static = sample_tokens(logits, keys, temperature, 0.9, 0, greedy=temperature == 0)
  np.testing.assert_array_equal(np.asarray(static), np.asarray(on_device))
  if temperature == 0:
    np.testing.assert_array_equal(np.asarray(static), np.argmax(np.asarray(logits), -1))
  else:  # a draw, not the argmax everywhere
    assert (np.asarray(static) != np.argmax(np.asarray(logits), -1)).any()


def test_top_k_and_temperature_filtering():
  logits = jnp.array([[3.0, 2.0, 1.0, 0.0]])
  kept = np.isfinite(np.asarray(filter_logits(logits, 1.0, 1.0, 2)))
  assert kept.tolist() == [[True, True, False, False]]
  scaled = np.asarray(filter_logits(logits, 0.5, 1.0, 0))
  np.testing.assert_allclose(scaled, [[6.0, 4.0, 2.0, 0.0]])
  assert np.isfinite(np.asarray(filter_logits(logits, 1.0, 1e-9, 0))).sum() == 1


def test_stop_hit_on_device():
  out = jnp.array([[1, 2, 3, 4, 0], [1, 2, 3, 4, 0]])
  stops = jnp.array([[-1, 3, 4], [7, 8, 9]])
  lens = jnp.array([2, 3])
  assert stop_hit(out, jnp.array([4, 3]), stops, lens).tolist() == [True, False]


def test_stop_sequence_split_across_tokens(tiny):
  _, model = tiny
  sampler = JaxSampler(model)
  free = sampler.generate([PROMPTS[0]], SamplingParams(temperature=0, max_tokens=16))[0][0]
  stop = free.token_ids[5:8]  # three tokens the model will produce at positions 5-7
  # Make sure the stop does not occur earlier in the output.
  assert all(free.token_ids[i:i + 3] != stop for i in range(5))
  cut = sampler.generate([PROMPTS[0]], SamplingParams(temperature=0, max_tokens=16,
                                                      stop=(stop, (511, 510))))[0][0]
  assert cut.stop_reason == "stop" and cut.token_ids == free.token_ids[:8]
  eos = free.token_ids[3]
  ended = sampler.generate([PROMPTS[0]], SamplingParams(temperature=0, max_tokens=16,
                                                        stop_token_ids=(eos,)))[0][0]
  first = free.token_ids.index(eos)
  assert ended.stop_reason == "eos" and ended.token_ids == free.token_ids[:first + 1]


def test_deterministic_under_a_seed_and_bucket_reuse(tiny):
  _, model = tiny
  sampler = JaxSampler(model)
  params = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, max_tokens=12, n=3, seed=7)
  a = sampler.generate(PROMPTS[:2], params)
  b = sampler.generate(PROMPTS[:2], params)
  c = sampler.generate(PROMPTS[:2], SamplingParams(**{**params.__dict__, "seed": 8}))
  assert a == b and a != c
  assert len(a) == 2 and all(len(x) == 3 for x in a)
  assert len({x.token_ids for x in a[0]}) == 3  # n samples differ from each other
  traces = sampler.traces
  sampler.generate([[1, 2, 3, 4, 5, 6]], SamplingParams(temperature=0.7, max_tokens=10, seed=1))
  assert sampler.traces == traces  # same buckets (prompt <= 32, <= 8 rows, <= 16 new): no retrace


def test_per_prompt_seeds_make_a_prompt_independent_of_its_batch(tiny):
  _, model = tiny
  sampler = JaxSampler(model)
  params = SamplingParams(temperature=1.0, max_tokens=12, n=2)
  together = sampler.generate(PROMPTS[:3], params, seeds=[11, 22, 33])
  alone = sampler.generate([PROMPTS[1]], params, seeds=[22])
  reordered = sampler.generate([PROMPTS[2], PROMPTS[1]], params, seeds=[33, 22])
  assert together[1] == alone[0] == reordered[1]
  assert together[2] == reordered[0]
  assert sampler.generate([PROMPTS[1]], params, seeds=[23])[0] != alone[0]
  with pytest.raises(ValueError, match="2 seeds for 3 prompts"):
    sampler.generate(PROMPTS[:3], params, seeds=[1, 2])


def test_banned_tokens_are_never_sampled(tiny):
  _, model = tiny
  sampler = JaxSampler(model)
  free = sampler.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=16))
  banned = sorted({t for c in free for t in c[0].token_ids})[:20]
  params = SamplingParams(temperature=1.0, max_tokens=16, n=4, banned_token_ids=banned)
  out = sampler.generate(PROMPTS, params) + sampler.generate(
      PROMPTS, dataclasses.replace(params, temperature=0, n=1))
  drawn = {t for row in out for c in row for t in c.token_ids}
  assert drawn and not drawn & set(banned)


def _sharded_copy(model, mesh):
  graphdef, state = nnx.split(model)
  return nnx.merge(graphdef, shard_state(state, mesh))


def test_mesh_sharded_generation_equals_single_device(tiny):
  _, model = tiny
  mesh = make_mesh(2, 2, 2, devices=jax.devices()[:8])
  single = JaxSampler(model).generate(PROMPTS, SamplingParams(temperature=0, max_tokens=10))
  sharded_model = _sharded_copy(model, mesh)
  sharded = JaxSampler(sharded_model, mesh=mesh).generate(
      PROMPTS, SamplingParams(temperature=0, max_tokens=10))
  assert [c[0].token_ids for c in sharded] == [c[0].token_ids for c in single]


def test_bad_sampling_params():
  with pytest.raises(ValueError, match="top_p"):
    SamplingParams(top_p=0)
  with pytest.raises(ValueError, match="empty stop"):
    SamplingParams(stop=((),))


def _nucleus_reference(scaled, top_p):
  """Kept-token mask of the sort-based definition: the smallest prefix of the tokens sorted by
  probability whose mass reaches top_p."""
  probs = np.exp(scaled - scaled.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  keep = np.zeros(scaled.shape, bool)
  for r in range(scaled.shape[0]):
    order = np.argsort(-scaled[r], kind="stable")
    before = np.cumsum(probs[r, order]) - probs[r, order]
    smallest = scaled[r, order][before < top_p].min()
    keep[r] = scaled[r] >= smallest
  return keep


@pytest.mark.parametrize("scale", [0.5, 3.0, 12.0])  # flat, medium and peaked rows
@pytest.mark.parametrize("top_p", [0.3, 0.9, 0.999])
def test_nucleus_matches_the_sorted_definition(scale, top_p):
  r = np.random.RandomState(int(scale * 10 + top_p * 1000))
  logits = (r.randn(6, 8192) * scale).astype(np.float32)
  logits[0, :4000] = logits[0, 4000:8000]  # ties
  logits[1, 17] = -np.inf  # a banned token
  got = np.isfinite(np.asarray(filter_logits(jnp.asarray(logits), 1.0, top_p, 0)))
  np.testing.assert_array_equal(got, _nucleus_reference(logits.astype(np.float64), top_p))
