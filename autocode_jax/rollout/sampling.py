"""Sampling on device: the filtered distribution (temperature, top-k, top-p without a sort),
per-row keys and Gumbel-max draws, and stop-sequence matching. Both of the built-in sampler's
generation paths (the rollout slots and the static batch) draw through these."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _largest_threshold(pred, lo_b1, hi_b1, iters: int = 40):
  """Per row, the largest t in [lo, hi] with pred(t) (pred decreasing in t; lo if none), by
  bisection. 40 halvings take any float32 logit range to adjacent floats."""
  def body(_, c):
    lo, hi = c
    mid = 0.5 * (lo + hi)
    ok = pred(mid)
    return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

  lo, hi = jax.lax.fori_loop(0, iters, body, (lo_b1, hi_b1))
  return jnp.where(pred(hi), hi, lo)


def nucleus_min(scaled_bv, top_p, lo_b1, hi_b1, max_iters: int = 40):
  """Per row, the smallest logit of the top-p nucleus: the largest t with
  mass{scaled >= t} >= top_p, by bisection over [lo, hi] (the row's finite min and max).

  It stops as soon as no row has a logit strictly between its lo and hi: the nucleus is then
  exactly {scaled >= lo} (its smallest logit lies in [lo, hi), and none lies inside), so a flat
  8K-token distribution takes ~15 halvings and a peaked one a handful, not all 40; each halving
  is one pass over the logits (the mass at the midpoint and the counts of logits on either
  side of it together). A row whose most likely token alone holds top_p keeps just that token.
  """
  probs = jax.nn.softmax(scaled_bv, axis=-1)

  def mass_at_least(t):
    return jnp.sum(jnp.where(scaled_bv >= t, probs, 0.0), -1, keepdims=True)

  done_b1 = mass_at_least(hi_b1) >= top_p

  def cond(c):
    i, _, _, open_ = c
    return (i < max_iters) & open_

  def body(c):
    i, lo, hi, _ = c
    mid = 0.5 * (lo + hi)
    ge = scaled_bv >= mid
    # One variadic reduction, so one pass: the mass at mid, the logits in (lo, mid), (mid, hi).
    mass, below, above = jax.lax.reduce(
        (jnp.where(ge, probs, 0.0), ((scaled_bv > lo) & ~ge).astype(jnp.int32),
         ((scaled_bv > mid) & (scaled_bv < hi)).astype(jnp.int32)),
        (jnp.float32(0), jnp.int32(0), jnp.int32(0)),
        lambda x, y: (x[0] + y[0], x[1] + y[1], x[2] + y[2]), (1,))
    ok = (mass >= top_p)[:, None]
    lo, hi = jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)
    inside = jnp.where(ok, above[:, None], below[:, None]) > 0
    return i + 1, lo, hi, jnp.any(inside & ~done_b1)

  _, lo, hi, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), lo_b1, hi_b1, ~jnp.all(done_b1)))
  return jnp.where(done_b1 | (mass_at_least(hi) >= top_p), hi, lo)


def filter_logits(logits_bv, temperature, top_p, top_k, candidates: int = 256):
  """Logits of the sampling distribution: divided by temperature, then the top-k and the
  smallest top-p nucleus kept (the most likely token always survives); others -inf.

  No full sort (XLA's CPU sort of a 150K vocabulary costs ~1 s per step) and no top-k pass
  unless top_k is set: the k-th largest logit comes from the top `candidates` logits when
  k <= candidates, else from bisection (the largest t with #{logits >= t} >= k); the nucleus
  from `nucleus_min`.
  """
  v = logits_bv.shape[-1]
  c = min(candidates, v)
  scaled = logits_bv / jnp.maximum(temperature, 1e-6)
  lo = jnp.min(jnp.where(jnp.isfinite(scaled), scaled, jnp.inf), axis=-1, keepdims=True)
  hi = jnp.max(scaled, axis=-1, keepdims=True)
  k = jnp.where(top_k > 0, jnp.minimum(top_k, v), v)

  def kth_exact():
    cand = jax.lax.top_k(scaled, c)[0]  # [B, C], descending
    return jnp.take_along_axis(cand, jnp.full((cand.shape[0], 1), jnp.minimum(k, c) - 1), -1)

  def kth_bisect():
    return _largest_threshold(lambda t: jnp.sum(scaled >= t, -1, keepdims=True) >= k, lo, hi)

  kth = jax.lax.cond(top_k > 0, lambda: jax.lax.cond(k <= c, kth_exact, kth_bisect), lambda: lo)
  top = jax.lax.cond(top_p < 1, lambda: nucleus_min(scaled, top_p, lo, hi), lambda: lo)
  keep = (scaled >= kth) & (scaled >= top)
  return jnp.where(keep, scaled, -jnp.inf)


def _fmix32(h):
  """MurmurHash3's 32-bit finaliser: a bijection of uint32 with full avalanche."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def gumbel_noise(keys_b, v: int):
  """[B, V] standard Gumbel noise, entry (b, i) a function of row b's key and i alone: a counter
  hash (two rounds of _fmix32 over the index and the key's two words) read as a uniform in
  (0, 1) with 24 bits, like jax.random.uniform's. On a CPU it costs a quarter of threefry's
  V draws per row, which made the draw twice as slow."""
  if jnp.issubdtype(keys_b.dtype, jax.dtypes.prng_key):
    keys_b = jax.random.key_data(keys_b)
  k = keys_b.astype(jnp.uint32)
  index = jnp.arange(v, dtype=jnp.uint32)[None, :]
  h = _fmix32(_fmix32(index ^ k[:, :1]) + k[:, 1:2] * jnp.uint32(0x9E3779B9))
  u = (h >> 8).astype(jnp.float32) * (2.0 ** -24) + 2.0 ** -25
  return -jnp.log(-jnp.log(u))


def sample_tokens(logits_bv, keys_b, temperature, top_p, top_k, greedy: bool | None = None):
  """Next tokens [B]: argmax when temperature == 0, else a draw from filter_logits, row b with
  its own key keys_b[b] (so a row's draws do not depend on the other rows). `greedy` (static)
  says which in advance, so the program holds one of the two; None decides on device."""
  def draw():
    # Gumbel-max: argmax(logits + Gumbel noise) is a draw from softmax(logits). The inverse CDF
    # (one uniform per row) is cheaper, but its draw moves whenever a token at a lower index
    # enters or leaves the nucleus or rounding shifts the CDF: with logits perturbed by 1e-6
    # (what another batch composition, device layout or host count does) it drew another token
    # for 1.9% of rows of a near-uniform 150K vocabulary; Gumbel-max for none of 2,048 (it
    # moves only on a near tie of the two largest perturbed logits).
    filtered = filter_logits(logits_bv, temperature, top_p, top_k)
    noise = gumbel_noise(keys_b, filtered.shape[-1])
    return jnp.argmax(filtered + noise, axis=-1).astype(jnp.int32)

  greedy_tokens = lambda: jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
  if greedy is not None:
    return greedy_tokens() if greedy else draw()
  return jax.lax.cond(temperature == 0, greedy_tokens, draw)


@jax.jit
def row_keys(seeds_b, index_b):
  """[B] keys fold_in(PRNGKey(seeds_b[b]), index_b[b]): a row's key from its seed and sample."""
  return jax.vmap(lambda s, j: jax.random.fold_in(jax.random.PRNGKey(s), j))(seeds_b, index_b)


def stop_hit(out_bm, length_b, stops_sl, stop_lens_s):
  """[B] bool: the last tokens generated (out[:, :length]) end with one of the stop sequences.
  stops_sl are right-aligned and left-padded with -1 to a common length L."""
  if stops_sl.shape[0] == 0:
    return jnp.zeros(out_bm.shape[0], bool)
  l = stops_sl.shape[1]
  idx = length_b[:, None] - l + jnp.arange(l)[None, :]  # [B, L] positions of the window
  window = jnp.where(idx >= 0, jnp.take_along_axis(out_bm, jnp.maximum(idx, 0), 1), -2)
  pos = jnp.arange(l)[None, :] >= (l - stop_lens_s)[:, None]  # [S, L] real part of each stop
  match = (window[:, None, :] == stops_sl[None]) | ~pos[None]
  long_enough = length_b[:, None] >= stop_lens_s[None, :]
  return jnp.any(jnp.all(match, axis=-1) & long_enough, axis=-1)


def stop_arrays(params, vocab_size: int):
  """The device form of params' stops: (eos [E] (-1 when none), stop sequences [S, L]
  right-aligned and left-padded with -1, their lengths [S], banned [V] bool)."""
  lmax = max((len(s) for s in params.stop), default=1)
  stops = np.full((len(params.stop), lmax), -1, np.int32)
  for j, s in enumerate(params.stop):
    stops[j, lmax - len(s):] = s
  banned = np.zeros((vocab_size,), bool)
  if params.banned_token_ids:
    banned[np.asarray(params.banned_token_ids)] = True
  return (np.array(params.stop_token_ids or (-1,), np.int32), stops,
          np.array([len(s) for s in params.stop], np.int32), banned)
