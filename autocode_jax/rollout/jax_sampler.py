"""`JaxSampler`: the built-in rollout engine on the Flax model (CPU, GPU, TPU; sharded).

Prompts are left-padded into a few length buckets and rows into batch buckets, so calls that fit
the same buckets reuse one compiled program; prefill fills a preallocated KV cache, then a jitted
`while_loop` samples one token per step, detects EOS and multi-token stop sequences on device and
exits as soon as every row is done.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from autocode_jax.rollout.engine import Completion, SamplingParams

_PROMPT_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
_REASON = {0: "length", 1: "eos", 2: "stop"}


def _bucket(n: int, buckets: Sequence[int]) -> int:
  for b in buckets:
    if n <= b:
      return b
  return -(-n // buckets[-1]) * buckets[-1]


def _pow2(n: int, floor: int = 1) -> int:
  return max(floor, 1 << (max(n, 1) - 1).bit_length())


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
def _row_keys(seeds_b, index_b):
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


_TRACES = 0  # generation programs traced, all samplers together


# One program per (model structure, pad id, buckets), shared by every sampler: a run that builds
# a new sampler per phase (the demo: warm start, EM, RL, SFT) compiles each shape once.
@functools.partial(jax.jit, static_argnums=(0, 1), static_argnames=("max_new", "greedy"))
def _generate(graphdef, pad_id, state, tokens_bp, mask_bp, stops_sl, stop_lens_s, eos_e, banned_v,
              keys_b, temperature, top_p, top_k, max_tokens, live_b, *, max_new, greedy):
  global _TRACES
  _TRACES += 1
  model = nnx.merge(graphdef, state)
  b, p = tokens_bp.shape
  positions = jnp.maximum(jnp.cumsum(mask_bp, axis=1) - 1, 0)
  logits, cache = model.prefill(tokens_bp, positions, p + max_new, mask_bp, last_only=True)
  last = logits[:, -1]
  next_pos = positions[:, -1] + 1
  out = jnp.full((b, max_new), pad_id, jnp.int32)
  lps = jnp.zeros((b, max_new), jnp.float32)
  done = ~live_b
  reason = jnp.zeros((b,), jnp.int32)
  length = jnp.zeros((b,), jnp.int32)

  def cond(c):
    i, _, _, _, _, done, _, _, _ = c
    return (i < max_tokens) & ~jnp.all(done)

  def body(c):
    i, cache, last, out, lps, done, reason, length, pos = c
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, i))(keys_b)
    tok = sample_tokens(jnp.where(banned_v, -jnp.inf, last), step_keys, temperature, top_p, top_k,
                        greedy)
    tok = jnp.where(done, pad_id, tok)
    lp = jnp.take_along_axis(jax.nn.log_softmax(last), tok[:, None], 1)[:, 0]
    out = out.at[:, i].set(tok)
    lps = lps.at[:, i].set(jnp.where(done, 0.0, lp))
    is_eos = jnp.any(tok[:, None] == eos_e[None, :], axis=-1) & ~done
    is_stop = stop_hit(out, jnp.full((b,), i + 1), stops_sl, stop_lens_s) & ~done & ~is_eos
    reason = jnp.where(is_eos, 1, jnp.where(is_stop, 2, reason))
    length = jnp.where(done, length, i + 1)
    done = done | is_eos | is_stop
    logits, cache = model.decode(tok[:, None], pos[:, None], cache, last_only=True)
    return i + 1, cache, logits[:, -1], out, lps, done, reason, length, pos + 1

  _, _, _, out, lps, _, reason, length, _ = jax.lax.while_loop(
      cond, body, (jnp.int32(0), cache, last, out, lps, done, reason, length, next_pos))
  return out, lps, reason, length


class JaxSampler:
  """Rollouts on the Flax model. `update(state)` swaps in new weights (same structure)."""

  def __init__(self, model, mesh=None, pad_id: int = 0, prompt_buckets=_PROMPT_BUCKETS,
               min_batch: int = 8):
    self.graphdef, self.state = nnx.split(model)
    self.config = model.config
    self.mesh, self.pad_id = mesh, pad_id
    self.prompt_buckets, self.min_batch = tuple(prompt_buckets), min_batch

  @property
  def traces(self) -> int:
    """How often generation programs were traced, by all samplers (tests check reuse)."""
    return _TRACES

  def update(self, state) -> None:
    self.state = state

  def program_call(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
                   seeds: Sequence[int] | None = None) -> tuple[tuple, dict]:
    """The (args, static kwargs) of the generation program `_generate` for these prompts, padded
    to their buckets (what `generate` runs; benchmarks profile it)."""
    if seeds is not None and len(seeds) != len(prompts):
      raise ValueError(f"JaxSampler.generate: {len(seeds)} seeds for {len(prompts)} prompts")
    rows = [list(p) for p in prompts for _ in range(params.n)]
    if not rows or any(len(r) == 0 for r in rows):
      raise ValueError("JaxSampler.generate: every prompt needs at least one token")
    p = _bucket(max(len(r) for r in rows), self.prompt_buckets)
    b = _pow2(len(rows), self.min_batch)
    if self.mesh is not None:
      shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
      b = -(-b // shards) * shards
    tokens = np.full((b, p), self.pad_id, np.int32)
    mask = np.zeros((b, p), np.int32)
    for i, r in enumerate(rows):
      tokens[i, p - len(r):] = r
      mask[i, p - len(r):] = 1
    mask[len(rows):, -1] = 1  # filler rows: one token, never sampled from
    live = np.arange(b) < len(rows)
    lmax = max((len(s) for s in params.stop), default=1)
    stops = np.full((len(params.stop), lmax), -1, np.int32)
    for j, s in enumerate(params.stop):
      stops[j, lmax - len(s):] = s
    stop_lens = np.array([len(s) for s in params.stop], np.int32)
    eos = np.array(params.stop_token_ids or (-1,), np.int32)
    banned = np.zeros((self.config.vocab_size,), bool)
    if params.banned_token_ids:
      banned[np.asarray(params.banned_token_ids)] = True
    prompt_seeds = [params.seed + p for p in range(len(prompts))] if seeds is None else seeds
    row_seeds = np.zeros((b,), np.uint32)
    row_seeds[:len(rows)] = np.repeat(np.asarray(prompt_seeds, np.int64) % 2**32, params.n)
    keys = _row_keys(row_seeds, np.arange(b, dtype=np.int32) % params.n)
    max_new = _pow2(params.max_tokens, 16)
    greedy = bool(params.temperature == 0)  # greedy programs hold no sampling filter
    args = (self.graphdef, self.pad_id, self.state, tokens, mask, stops, stop_lens, eos, banned,
            keys, jnp.float32(params.temperature), jnp.float32(params.top_p),
            jnp.int32(params.top_k), jnp.int32(params.max_tokens), live)
    return args, {"max_new": max_new, "greedy": greedy}

  def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
               seeds: Sequence[int] | None = None) -> list[list[Completion]]:
    """Row j of prompt p samples with key fold_in(PRNGKey(seeds[p]), j); without `seeds`,
    prompt p's seed is params.seed + p."""
    args, kw = self.program_call(prompts, params, seeds)
    with jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext():
      out, lps, reason, length = _generate(*args, **kw)
    out, lps, reason, length = (np.asarray(x) for x in (out, lps, reason, length))
    results: list[list[Completion]] = []
    for i in range(len(prompts) * params.n):
      r, n = int(reason[i]), int(length[i])
      comp = Completion(tuple(int(t) for t in out[i, :n]), tuple(float(x) for x in lps[i, :n]),
                        _REASON[r])
      if i % params.n == 0:
        results.append([])
      results[-1].append(comp)
    return results
