"""The decoder-only transformer (Qwen2 / Llama) in Flax NNX, with layers stacked and scanned.

Per-layer weights are stacked on a leading `layers` axis and the blocks run under `jax.lax.scan`,
so a 28-layer 7B model compiles as fast as a 1-layer one and remat applies per block; models of
a few layers run them unrolled instead (`ModelConfig.layer_loop`), which is faster on a CPU. The
module is meant to be used functionally: `graphdef, state = nnx.split(model)` once, then the pure
functions at the bottom of this file (`forward`, `token_logprobs`, `decode`) under `jax.jit`.

Letters in shapes: B batch, T query length, S key length (cache slots), D hidden, H query heads,
K key/value heads, G = H // K, E head dim, F MLP width, V vocab, L layers.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from autocode_jax.models.config import ModelConfig
from autocode_jax.models.sharding import constrain

_REMAT = {
    "full": None,  # save nothing: recompute the whole block in the backward pass
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
# Finite, so a query row with no visible key (a padding row) gives a uniform softmax, not NaN.
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


class KVCache(NamedTuple):
  """A preallocated key/value cache for incremental decoding.

  k, v: [L, B, K, S, E] keys (after RoPE) and values of every slot, heads before slots so that
    attention reads each head's keys as one contiguous [S, E] matrix (no transpose per step);
    with unrolled layers (ModelConfig.unroll_layers) a tuple of L arrays [B, K, S, E], so no
    block copies its layer's slice out of a stacked array on every step.
  valid: [B, S] the slot holds a real (non-padding) token.
  index: [] int32, the next slot to write; slots are filled left to right for all rows at once.
  """
  k: jax.Array | tuple[jax.Array, ...]
  v: jax.Array | tuple[jax.Array, ...]
  valid: jax.Array
  index: jax.Array

  # Logical axes of k and v: the cache is sharded like the activations it holds.
  AXES = ("layers", "batch", "act_kv_heads", "cache_seq", "head_dim")

  @classmethod
  def init(cls, config: ModelConfig, batch: int, max_len: int, dtype=None) -> "KVCache":
    dtype = jnp.dtype(dtype or config.dtype)
    shape = (batch, config.num_kv_heads, max_len, config.head_dim)
    if config.unroll_layers:
      zeros = lambda: tuple(constrain(jnp.zeros(shape, dtype), cls.AXES[1:])
                            for _ in range(config.num_layers))
    else:
      zeros = lambda: constrain(jnp.zeros((config.num_layers, *shape), dtype), cls.AXES)
    return cls(zeros(), zeros(), jnp.zeros((batch, max_len), bool), jnp.zeros((), jnp.int32))


def rms_norm(x_btd, w_d, eps: float):
  """HF's RMSNorm: normalise in fp32, cast back, then scale (the weight multiplies last)."""
  xf = x_btd.astype(jnp.float32)
  y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
  return w_d.astype(x_btd.dtype) * y.astype(x_btd.dtype)


def rope(x_bthe, positions_bt, theta: float):
  """Rotary embedding in HF's half-split layout: x * cos + rotate_half(x) * sin."""
  e = x_bthe.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, e, 2, dtype=jnp.float32) / e))  # [E/2]
  freqs = positions_bt.astype(jnp.float32)[..., None] * inv_freq  # [B, T, E/2]
  emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]  # [B, T, 1, E]
  cos, sin = jnp.cos(emb).astype(x_bthe.dtype), jnp.sin(emb).astype(x_bthe.dtype)
  x1, x2 = jnp.split(x_bthe, 2, axis=-1)
  return x_bthe * cos + jnp.concatenate([-x2, x1], axis=-1) * sin


def attention(q_bthe, blocks):
  """Grouped-query attention of T queries over one or more blocks of keys, with one softmax
  over all of them: blocks = [(k [B, K, S, E], v [B, K, S, E], visible [B, T, S] bool), ...].

  Each KV head's G query heads and T queries are folded into one [T * G, E] matrix, so every
  product is a plain batched matmul over (B, K) with contiguous operands (the form XLA's CPU
  and GPU matmul libraries take without a transpose). Decoding passes the cache and the new
  tokens as two blocks, so the cache is read in place rather than copied into one key array.
  """
  b, t, h, e = q_bthe.shape
  kh = blocks[0][0].shape[1]
  g = h // kh
  q = q_bthe.reshape(b, t, kh, g, e).transpose(0, 2, 1, 3, 4).reshape(b, kh, t * g, e)
  scores = []
  for k_bkse, _, visible_bts in blocks:
    s = jnp.einsum("bkqe,bkse->bkqs", q, k_bkse, preferred_element_type=jnp.float32)
    s = (s * (e ** -0.5)).reshape(b, kh, t, g, -1)
    scores.append(jnp.where(visible_bts[:, None, :, None, :], s, _MASK_VALUE))
  # The shift only keeps exp in range: softmax does not depend on it, so no gradient flows.
  top = jax.lax.stop_gradient(
      functools.reduce(jnp.maximum, [jnp.max(s, axis=-1, keepdims=True) for s in scores]))
  exps = [jnp.exp(s - top) for s in scores]
  total = functools.reduce(jnp.add, [jnp.sum(x, axis=-1, keepdims=True) for x in exps])
  out = None
  for x, (_, v_bkse, _) in zip(exps, blocks):
    p = (x / total).astype(v_bkse.dtype).reshape(b, kh, t * g, -1)
    o = jnp.einsum("bkqs,bkse->bkqe", p, v_bkse)
    out = o if out is None else out + o
  return out.reshape(b, kh, t, g, e).transpose(0, 2, 1, 3, 4).reshape(b, t, h, e)


class Transformer(nnx.Module):
  """Qwen2 / Llama decoder. `model(tokens_bt)` returns fp32 logits [B, T, V]."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    c = config
    pd = jnp.dtype(c.param_dtype)
    L, D, H, K, E, F, V = (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim,
                           c.intermediate_size, c.vocab_size)
    normal = nnx.initializers.normal(0.02)

    def param(shape, axes, init=normal):
      return nnx.Param(init(rngs.params(), shape, pd), axes=axes)

    zeros, ones = nnx.initializers.zeros, nnx.initializers.ones
    self.embed = param((V, D), ("vocab", "embed"))
    self.attn_norm = param((L, D), ("layers", "norm"), ones)
    self.wq = param((L, D, H, E), ("layers", "embed", "q_heads", "head_dim"))
    self.wk = param((L, D, K, E), ("layers", "embed", "kv_heads", "head_dim"))
    self.wv = param((L, D, K, E), ("layers", "embed", "kv_heads", "head_dim"))
    if c.attention_bias:
      self.bq = param((L, H, E), ("layers", "q_heads", "head_dim"), zeros)
      self.bk = param((L, K, E), ("layers", "kv_heads", "head_dim"), zeros)
      self.bv = param((L, K, E), ("layers", "kv_heads", "head_dim"), zeros)
    self.wo = param((L, H, E, D), ("layers", "q_heads", "head_dim", "embed"))
    self.mlp_norm = param((L, D), ("layers", "norm"), ones)
    self.w_gate = param((L, D, F), ("layers", "embed", "mlp"))
    self.w_up = param((L, D, F), ("layers", "embed", "mlp"))
    self.w_down = param((L, F, D), ("layers", "mlp", "embed"))
    self.final_norm = param((D,), ("norm",), ones)
    if not c.tie_word_embeddings:
      self.lm_head = param((D, V), ("embed", "vocab"))

  # -- blocks ---------------------------------------------------------------------------------

  def _layer_params(self) -> dict[str, jax.Array]:
    names = ["attn_norm", "wq", "wk", "wv", "wo", "mlp_norm", "w_gate", "w_up", "w_down"]
    if self.config.attention_bias:
      names += ["bq", "bk", "bv"]
    return {n: getattr(self, n)[...] for n in names}

  def _block(self, h_btd, p, positions_bt, visible_bts, cached):
    """One decoder block: returns (h, (k, v)) with this block's new keys / values [B, K, T, E].

    visible_bts: which of the T new tokens each new token attends to. cached: None, or
    (k, v [B, K, S, E], visible [B, T, S]) of the cache, attended to beside the new tokens."""
    c = self.config
    dt = jnp.dtype(c.dtype)
    w = {n: a.astype(dt) for n, a in p.items()}
    x = rms_norm(h_btd, w["attn_norm"], c.rms_norm_eps)
    q = jnp.einsum("btd,dhe->bthe", x, w["wq"])
    k = jnp.einsum("btd,dke->btke", x, w["wk"])
    v = jnp.einsum("btd,dke->btke", x, w["wv"])
    if c.attention_bias:
      q, k, v = q + w["bq"], k + w["bk"], v + w["bv"]
    q = constrain(rope(q, positions_bt, c.rope_theta), ("batch", "seq", "act_heads", "head_dim"))
    kv_axes = ("batch", "act_kv_heads", "seq", "head_dim")
    k = constrain(rope(k, positions_bt, c.rope_theta).transpose(0, 2, 1, 3), kv_axes)
    v = constrain(v.transpose(0, 2, 1, 3), kv_axes)
    blocks = [(k, v, visible_bts)]
    if cached is not None:
      ck, cv, cvis = cached
      blocks.insert(0, (ck.astype(dt), cv.astype(dt), cvis))
    out = attention(q, blocks)
    h_btd = h_btd + jnp.einsum("bthe,hed->btd", out, w["wo"])
    h_btd = constrain(h_btd, ("batch", "seq", "act_embed"))
    x = rms_norm(h_btd, w["mlp_norm"], c.rms_norm_eps)
    gate = constrain(jnp.einsum("btd,df->btf", x, w["w_gate"]), ("batch", "seq", "act_mlp"))
    up = constrain(jnp.einsum("btd,df->btf", x, w["w_up"]), ("batch", "seq", "act_mlp"))
    h_btd = h_btd + jnp.einsum("btf,fd->btd", jax.nn.silu(gate) * up, w["w_down"])
    return constrain(h_btd, ("batch", "seq", "act_embed")), (k, v)

  def _trunk(self, tokens_bt, positions_bt, visible_bts, cache=None, cache_visible_bts=None,
             return_kv: bool = False):
    """Embedding, the scanned blocks and the final norm: (hidden states [B, T, D], the new
    tokens' keys and values [L, B, K, T, E] (per layer when unrolled) with a cache or
    `return_kv`, else None)."""
    return_kv = return_kv or cache is not None
    c = self.config
    h = jnp.take(self.embed[...], tokens_bt, axis=0).astype(c.dtype)
    h = constrain(h, ("batch", "seq", "act_embed"))

    def body(h, xs):
      p, kv = xs
      cached = None if kv is None else (kv[0], kv[1], cache_visible_bts)
      h, new_kv = self._block(h, p, positions_bt, visible_bts, cached)
      return h, (new_kv if return_kv else None)

    if c.remat != "none":
      body = jax.checkpoint(body, policy=_REMAT[c.remat], prevent_cse=False)
    params = self._layer_params()
    if not c.unroll_layers:
      h, kv_out = jax.lax.scan(body, h, (params, None if cache is None else (cache.k, cache.v)))
    else:  # the cache is per layer already; the new keys / values stay per layer too
      outs = []
      for layer in range(c.num_layers):
        kv = None if cache is None else (cache.k[layer], cache.v[layer])
        h, out = body(h, ({n: a[layer] for n, a in params.items()}, kv))
        outs.append(out)
      kv_out = (tuple(o[0] for o in outs), tuple(o[1] for o in outs)) if return_kv else None
    return rms_norm(h, self.final_norm[...], c.rms_norm_eps), kv_out

  def _unembed(self):
    """The output projection [D, V] in the compute dtype."""
    w = self.embed[...].T if self.config.tie_word_embeddings else self.lm_head[...]
    return w.astype(self.config.dtype)

  # -- public methods -------------------------------------------------------------------------

  def hidden_states(self, tokens_bt, positions_bt=None, attention_mask_bt=None):
    """Final-norm hidden states [B, T, D] of a full (uncached) causal forward.

    positions_bt: RoPE positions, default 0..T-1 (pass cumsum(mask) - 1 for left padding).
    attention_mask_bt: 1 for real tokens, 0 for padding; padding is never attended to.
    """
    b, t = tokens_bt.shape
    if positions_bt is None:
      positions_bt = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    h, _ = self._trunk(tokens_bt, positions_bt, _causal(attention_mask_bt, b, t))
    return h

  def __call__(self, tokens_bt, positions_bt=None, attention_mask_bt=None):
    """Logits [B, T, V] in fp32 (materialised whole: use `token_logprobs` for training)."""
    h = self.hidden_states(tokens_bt, positions_bt, attention_mask_bt)
    logits = jnp.einsum("btd,dv->btv", h, self._unembed(), preferred_element_type=jnp.float32)
    return constrain(logits, ("batch", "seq", "act_vocab"))

  def token_logprobs(self, tokens_bt, targets_bt, positions_bt=None, attention_mask_bt=None,
                     with_entropy: bool = False):
    """log p(targets_bt[b, t] | tokens_bt[b, :t+1]) as fp32 [B, T]; with `with_entropy`, also the
    entropy of each position's next-token distribution, fp32 [B, T].

    The vocabulary projection and log-softmax run over `config.logprob_chunk` positions at a time
    (several chunks under remat), so no pass holds more than [B, chunk, V] fp32 logits.
    """
    h = self.hidden_states(tokens_bt, positions_bt, attention_mask_bt)
    b, t, d = h.shape
    chunk = min(self.config.logprob_chunk, t)
    n = -(-t // chunk)
    pad = n * chunk - t
    h = jnp.pad(h, ((0, 0), (0, pad), (0, 0))).reshape(b, n, chunk, d).swapaxes(0, 1)
    tgt = jnp.pad(targets_bt, ((0, 0), (0, pad))).reshape(b, n, chunk).swapaxes(0, 1)
    w = self._unembed()

    def one_chunk(h_bcd, tgt_bc):
      logits = jnp.einsum("bcd,dv->bcv", h_bcd, w, preferred_element_type=jnp.float32)
      logits = constrain(logits, ("batch", "seq", "act_vocab"))
      lse = jax.nn.logsumexp(logits, axis=-1)
      picked = jnp.take_along_axis(logits, tgt_bc[..., None], axis=-1)[..., 0] - lse
      if not with_entropy:
        return picked, None
      probs = jnp.exp(logits - lse[..., None])
      return picked, lse - jnp.sum(probs * logits, axis=-1)

    if n == 1:  # one chunk: its logits are all there is to hold, and recomputing them buys nothing
      lp, ent = jax.tree.map(lambda x: x[None], one_chunk(h[0], tgt[0]))
    else:
      chunked = jax.checkpoint(one_chunk)
      _, (lp, ent) = jax.lax.scan(lambda _, xs: (None, chunked(*xs)), None, (h, tgt))
    unchunk = lambda x: x.swapaxes(0, 1).reshape(b, n * chunk)[:, :t]
    return (unchunk(lp), unchunk(ent)) if with_entropy else unchunk(lp)

  def decode(self, tokens_bt, positions_bt, cache: KVCache, attention_mask_bt=None,
             last_only: bool = False):
    """Runs T new tokens against the cache (prefill when T > 1, one step when T == 1).

    Writes their keys/values at slots [cache.index, cache.index + T) and returns fp32 logits
    [B, T, V] (with `last_only`, [B, 1, V] of the last position: a sampler needs no more) and
    the updated cache. Padding tokens (attention_mask 0) are stored as invalid. The cache is
    read in place by every block; only the T new slots are written, once, after the blocks.
    """
    b, t = tokens_bt.shape
    new_valid = _mask(attention_mask_bt, b, t)
    # Slots at or after cache.index are not yet valid, so the cache block needs no causal part.
    cache_visible = jnp.broadcast_to(cache.valid[:, None, :], (b, t, cache.valid.shape[1]))
    h, (k, v) = self._trunk(tokens_bt, positions_bt, _causal(new_valid, b, t), cache,
                            cache_visible)
    return self._logits(h, last_only), _write(cache, k, v, new_valid)

  def extend(self, tokens_bt, positions_bt, cache: KVCache | None = None, cache_visible_bs=None,
             attention_mask_bt=None, at_b=None):
    """T new tokens per row after that row's cached ones, writing nothing: the rollout slots'
    step (rollout/slots.py), whose rows each sit at their own position in the cache.

    cache: the rows' cached keys and values (None: nothing cached, a fresh prefill); the new
    tokens attend to the slots where cache_visible_bs [B, S] is True, and causally to each other
    except padding (attention_mask_bt 0). Returns fp32 logits [B, V] at position at_b [B] of
    each row (default the last), and the new tokens' keys and values [L, B, K, T, E] (per layer
    when unrolled) for the caller to write where it keeps them.
    """
    b, t = tokens_bt.shape
    new_valid = _mask(attention_mask_bt, b, t)
    cache_visible = None
    if cache is not None:
      cache_visible = jnp.broadcast_to(cache_visible_bs[:, None, :],
                                       (b, t, cache_visible_bs.shape[1]))
    h, kv = self._trunk(tokens_bt, positions_bt, _causal(new_valid, b, t), cache, cache_visible,
                        return_kv=True)
    if at_b is not None:
      h = jnp.take_along_axis(h, at_b[:, None, None], axis=1)
    return self._logits(h, last_only=True)[:, 0], kv

  def _logits(self, h_btd, last_only: bool):
    h = h_btd[:, -1:] if last_only else h_btd
    return jnp.einsum("btd,dv->btv", h, self._unembed(), preferred_element_type=jnp.float32)

  def prefill(self, tokens_bt, positions_bt, max_len: int, attention_mask_bt=None,
              last_only: bool = False):
    """`decode` of T tokens into a new, empty cache of max_len slots, without reading it."""
    b, t = tokens_bt.shape
    new_valid = _mask(attention_mask_bt, b, t)
    h, (k, v) = self._trunk(tokens_bt, positions_bt, _causal(new_valid, b, t), return_kv=True)
    return self._logits(h, last_only), _write(KVCache.init(self.config, b, max_len), k, v,
                                              new_valid)


def _write(cache: KVCache, k, v, valid_bt) -> KVCache:
  """The cache with T new slots written at cache.index: k, v [L, B, K, T, E] (or per layer,
  like the cache), valid [B, T]."""
  def put(old, new):
    if isinstance(old, tuple):
      return tuple(put(o, n) for o, n in zip(old, new))
    start = (0,) * (old.ndim - 2) + (cache.index, 0)
    return jax.lax.dynamic_update_slice(old, new.astype(old.dtype), start)

  return KVCache(put(cache.k, k), put(cache.v, v),
                 jax.lax.dynamic_update_slice(cache.valid, valid_bt, (0, cache.index)),
                 cache.index + valid_bt.shape[1])


def _mask(attention_mask_bt, b: int, t: int):
  """[B, T] bool: real tokens (all of them without a mask)."""
  return jnp.ones((b, t), bool) if attention_mask_bt is None else attention_mask_bt.astype(bool)


def _causal(attention_mask_bt, b: int, t: int):
  """[B, T, T] visibility of a causal forward: query t sees key s <= t unless s is padding."""
  tril = jnp.tril(jnp.ones((t, t), bool))[None]
  if attention_mask_bt is None:
    return jnp.broadcast_to(tril, (b, t, t))
  return tril & attention_mask_bt.astype(bool)[:, None, :]


# -- functional API: pure functions of (graphdef, state), for jax.jit ---------------------------

def forward(graphdef, state, tokens_bt, positions_bt=None, attention_mask_bt=None):
  """Logits [B, T, V]; see Transformer.__call__."""
  return nnx.merge(graphdef, state)(tokens_bt, positions_bt, attention_mask_bt)


def token_logprobs(graphdef, state, tokens_bt, targets_bt, positions_bt=None,
                   attention_mask_bt=None, with_entropy: bool = False):
  """Per-token log-probs [B, T] of targets (and entropies); see Transformer.token_logprobs."""
  model = nnx.merge(graphdef, state)
  return model.token_logprobs(tokens_bt, targets_bt, positions_bt, attention_mask_bt, with_entropy)


def decode(graphdef, state, tokens_bt, positions_bt, cache, attention_mask_bt=None,
           last_only: bool = False):
  """(logits [B, T, V], cache); see Transformer.decode."""
  return nnx.merge(graphdef, state).decode(tokens_bt, positions_bt, cache, attention_mask_bt,
                                           last_only)


def abstract_model(config: ModelConfig) -> Transformer:
  """The model with ShapeDtypeStructs for parameters: nothing allocated."""
  return nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))


def count_params(config: ModelConfig) -> int:
  """Exact parameter count, computed without allocating."""
  state = nnx.state(abstract_model(config), nnx.Param)
  return sum(x.size for x in jax.tree.leaves(state))


def init_model(config: ModelConfig, seed: int = 0, mesh=None, rules=None) -> Transformer:
  """A randomly initialised model; with a mesh, each parameter is created already sharded."""
  from autocode_jax.models import sharding

  def make_state():
    return nnx.split(Transformer(config, rngs=nnx.Rngs(seed)))[1]

  graphdef, abstract_state = nnx.split(abstract_model(config))
  out = None
  if mesh is not None:
    out = sharding.state_shardings(abstract_state, mesh, rules or sharding.LOGICAL_RULES)
  state = jax.jit(make_state, out_shardings=out)()
  return nnx.merge(graphdef, state)
