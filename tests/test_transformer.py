"""Invariances of the decoder: cached decoding == full forward, chunked log-probs == naive
log-softmax (values and gradients), remat and dtype settings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from autocode_jax.models import KVCache, abstract_model, init_model, preset, token_logprobs


def _model(name="tiny-qwen2", **settings):
  return init_model(preset(name, **settings), seed=3)


def _tokens(b, t, vocab, seed=0):
  return jnp.asarray(np.random.RandomState(seed).randint(0, vocab, (b, t)))


@pytest.mark.parametrize("name", ["tiny-qwen2", "tiny-llama"])
def test_cached_decoding_equals_full_forward(name):
  model = _model(name)
  b, t, prompt = 2, 12, 5
  tokens = _tokens(b, t, model.config.vocab_size)
  full = model(tokens)
  cache = KVCache.init(model.config, b, 16)
  positions = jnp.broadcast_to(jnp.arange(t), (b, t))
  step = jax.jit(lambda tok, pos, c: model.decode(tok, pos, c))
  logits, cache = step(tokens[:, :prompt], positions[:, :prompt], cache)
  outs = [logits]
  for i in range(prompt, t):
    logits, cache = step(tokens[:, i:i + 1], positions[:, i:i + 1], cache)
    outs.append(logits)
  assert int(cache.index) == t
  np.testing.assert_allclose(np.concatenate(outs, axis=1), full, atol=1e-5, rtol=0)


def test_cached_decoding_with_left_padded_prompts():
  """Rows of different prompt lengths, left-padded, decode like each row alone."""
  model = _model()
  vocab = model.config.vocab_size
  lengths, pad_to, new = [7, 3], 7, 4
  seqs = [_tokens(1, n + new, vocab, seed=s)[0] for s, n in enumerate(lengths)]
  tokens = jnp.stack([jnp.pad(s[:n], (pad_to - n, 0)) for s, n in zip(seqs, lengths)])
  mask = jnp.asarray([[0] * (pad_to - n) + [1] * n for n in lengths])
  positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
  cache = KVCache.init(model.config, 2, pad_to + new)
  step = jax.jit(lambda tok, pos, c, m=None: model.decode(tok, pos, c, m))
  logits, cache = step(tokens, positions, cache, mask)
  last = [logits[:, -1]]
  for j in range(new - 1):
    nxt = jnp.stack([s[n + j] for s, n in zip(seqs, lengths)])[:, None]
    pos = jnp.asarray(lengths)[:, None] + j
    logits, cache = step(nxt, pos, cache)
    last.append(logits[:, -1])
  for row, (s, n) in enumerate(zip(seqs, lengths)):
    alone = model(s[None, :n + new - 1])[0, n - 1:]
    np.testing.assert_allclose(np.stack([l[row] for l in last]), alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunk", [4, 5, 64])
def test_chunked_logprobs_equal_log_softmax(chunk):
  model = _model(logprob_chunk=chunk)
  tokens = _tokens(3, 13, model.config.vocab_size)
  inputs, targets = tokens[:, :-1], tokens[:, 1:]
  lp = model.token_logprobs(inputs, targets)
  ref = jnp.take_along_axis(jax.nn.log_softmax(model(inputs)), targets[..., None], -1)[..., 0]
  assert lp.shape == (3, 12) and lp.dtype == jnp.float32
  np.testing.assert_allclose(lp, ref, atol=1e-5, rtol=0)
  lp2, ent = model.token_logprobs(inputs, targets, with_entropy=True)
  logp = jax.nn.log_softmax(model(inputs))
  np.testing.assert_allclose(lp2, lp, atol=0, rtol=0)
  np.testing.assert_allclose(ent, -(jnp.exp(logp) * logp).sum(-1), atol=1e-5, rtol=0)


def test_chunked_logprobs_gradient_equals_naive_gradient():
  model = _model(logprob_chunk=4)
  graphdef, state = nnx.split(model)
  tokens = _tokens(2, 11, model.config.vocab_size)
  inputs, targets = tokens[:, :-1], tokens[:, 1:]
  weights = jnp.asarray(np.random.RandomState(1).rand(2, 10), jnp.float32)

  def chunked(s):
    return jnp.sum(token_logprobs(graphdef, s, inputs, targets) * weights)

  def naive(s):
    logits = nnx.merge(graphdef, s)(inputs)
    lp = jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
    return jnp.sum(lp * weights)

  g1, g2 = jax.jit(jax.grad(chunked))(state), jax.jit(jax.grad(naive))(state)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_chunked_logprobs_never_materialise_full_logits():
  """The compiled forward+backward holds no [B, T, V] fp32 buffer when chunked."""
  cfg = preset("tiny-qwen2", logprob_chunk=16)
  graphdef, state = nnx.split(init_model(cfg))
  b, t, v = 4, 256, cfg.vocab_size
  tokens = jnp.zeros((b, t), jnp.int32)
  loss = lambda s: token_logprobs(graphdef, s, tokens, tokens).sum()
  hlo = jax.jit(jax.grad(loss)).lower(state).compile().as_text()
  assert f"f32[{b},{t},{v}]" not in hlo
  assert f"f32[{b},16,{v}]" in hlo


@pytest.mark.parametrize("remat", ["full", "dots_saveable"])
def test_remat_does_not_change_gradients(remat):
  tokens = _tokens(2, 9, 512)
  grads = []
  for policy in ("none", remat):
    graphdef, state = nnx.split(init_model(preset("tiny-qwen2", remat=policy), seed=3))
    loss = lambda s: token_logprobs(graphdef, s, tokens[:, :-1], tokens[:, 1:]).sum()
    grads.append(jax.jit(jax.grad(loss))(state))
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


def test_bf16_params_and_compute():
  fp32 = _model()
  graphdef, _ = nnx.split(abstract_model(preset("tiny-qwen2", param_dtype="bfloat16",
                                                dtype="bfloat16")))
  state = jax.tree.map(lambda x: x.astype(jnp.bfloat16), nnx.state(fp32, nnx.Param))
  bf16 = nnx.merge(graphdef, state)
  tokens = _tokens(2, 8, 512)
  a, b = fp32(tokens), bf16(tokens)
  assert bf16.wq[...].dtype == jnp.bfloat16 and b.dtype == jnp.float32
  # Same weights up to bf16 rounding, so logits agree to bf16 precision.
  assert float(jnp.abs(a - b).max()) < 0.05 * float(jnp.abs(a).max())


def test_prefill_equals_decode_on_an_empty_cache():
  """`prefill` skips reading the empty cache; logits and the filled cache are decode's."""
  model = _model()
  tokens = _tokens(2, 6, model.config.vocab_size)
  mask = jnp.asarray([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
  positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
  want, want_cache = model.decode(tokens, positions, KVCache.init(model.config, 2, 10), mask)
  got, cache = model.prefill(tokens, positions, 10, mask)
  last, _ = model.prefill(tokens, positions, 10, mask, last_only=True)
  real = np.asarray(mask, bool)  # a padding position's output is never used
  np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=1e-5, rtol=0)
  np.testing.assert_allclose(last[:, 0], want[:, -1], atol=1e-5, rtol=0)
  valid = np.asarray(want_cache.valid)  # [B, S]; invalid slots are never read
  np.testing.assert_array_equal(cache.valid, valid)
  assert int(cache.index) == int(want_cache.index) == 6
  for a, b in ((cache.k, want_cache.k), (cache.v, want_cache.v)):
    a, b = np.moveaxis(np.asarray(a), 3, 1), np.moveaxis(np.asarray(b), 3, 1)  # [L, S, B, K, E]
    np.testing.assert_allclose(a[:, valid.T], b[:, valid.T], atol=1e-5, rtol=0)
