"""Rollout slots: the built-in sampler's continuous batching with KV continuation.

One device state holds a fixed number of decode slots, each with its own KV cache row, write
position, last logits, key and budget (`Slots`). Two kinds of jitted program change it, the
state donated to each so nothing copies the cache:
- `_append` writes tokens into some slots at each slot's own position: a new prompt (into a
  free slot, "fresh": the program reads no cache) or a continuation such as a tool output
  (after the slot's own last token, attending to its cache), and leaves the next distribution
  ready. One program per (rows, tokens) bucket.
- `_decode_chunk` runs up to `chunk` steps over all slots, leaving early once none runs, or,
  while new trajectories wait, once enough slots have stopped to take them; a slot that stops
  writes nothing more and draws no key. One host transfer per chunk.
Shapes never depend on how many slots are busy. `SlotBatch` is the host loop over them: submit a
prompt or continue a stopped trajectory, run a chunk, collect what stopped and why; a finished
trajectory's slot is released for a waiting one at once.

Keys as in the static batch: a segment (what one submit or continuation samples) has the key
fold_in(PRNGKey(seed), sample) and its step j draws with fold_in(key, j), so a trajectory's
tokens depend on neither its neighbours nor the order of admission nor the slot it got.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
from typing import Hashable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from autocode_jax.models.sharding import constrain
from autocode_jax.models.transformer import KVCache
from autocode_jax.rollout.engine import Completion, SamplingParams
from autocode_jax.rollout.sampling import row_keys, sample_tokens, stop_arrays, stop_hit

REASONS = {0: "length", 1: "eos", 2: "stop"}
TRACES: collections.Counter = collections.Counter()  # program name -> traces, all batches


class Slots(NamedTuple):
  """The device state of B decode slots of S cache positions each.

  k, v, valid: the KV cache (KVCache's layout; valid [B, S]). length [B]: tokens held, the next
  write position and RoPE position. logits [B, V]: the next-token logits after the last token.
  key [B, 2]: the segment's key; step [B]: tokens sampled in the segment; budget [B]: tokens it
  may sample; fences [B]: whether the fence tokens end it; running [B]; reason [B]: why it
  stopped (REASONS); recent [B, R]: its last R tokens, for stop sequences (-2 before any).
  """
  k: jax.Array | tuple[jax.Array, ...]
  v: jax.Array | tuple[jax.Array, ...]
  valid: jax.Array
  length: jax.Array
  logits: jax.Array
  key: jax.Array
  step: jax.Array
  budget: jax.Array
  fences: jax.Array
  running: jax.Array
  reason: jax.Array
  recent: jax.Array


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _init_slots(config, b: int, s: int, r: int) -> Slots:
  cache = KVCache.init(config, b, s)
  zeros = lambda dtype: jnp.zeros((b,), dtype)
  logits = constrain(jnp.zeros((b, config.vocab_size), jnp.float32), ("batch", "act_vocab"))
  return Slots(cache.k, cache.v, cache.valid, zeros(jnp.int32), logits,
               jnp.zeros((b, 2), jnp.uint32),
               zeros(jnp.int32), zeros(jnp.int32), zeros(bool), zeros(bool), zeros(jnp.int32),
               jnp.full((b, r), -2, jnp.int32))


def _put(arr, rows_a, pos_at, new):
  """arr [L, B, K, S, E] (or per layer [B, K, S, E]) with row rows_a[a]'s T new entries of new
  [L, A, K, T, E] at positions pos_at[a]; an index out of range (row B, position S) writes
  nothing, so filler rows and stopped slots leave the cache as it was."""
  if isinstance(arr, tuple):
    return tuple(_put(x, rows_a, pos_at, n) for x, n in zip(arr, new))
  r = rows_a[:, None]
  if arr.ndim == 5:  # advanced indices apart: the indexed result is [A, T, L, K, E]
    return arr.at[:, r, :, pos_at].set(new.transpose(1, 3, 0, 2, 4).astype(arr.dtype),
                                       mode="drop")
  return arr.at[r, :, pos_at].set(new.transpose(0, 2, 1, 3).astype(arr.dtype), mode="drop")


def _rows(arr, rows_a):
  """The cache rows rows_a of arr (an index out of range reads the last row; unused)."""
  if isinstance(arr, tuple):
    return tuple(_rows(x, rows_a) for x in arr)
  return jnp.take(arr, rows_a, axis=arr.ndim - 4, mode="clip")


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("fresh",),
                   donate_argnames=("slots",))
def _append(graphdef, state, slots: Slots, rows_a, tokens_at, count_a, key_a, budget_a, fences_a,
            *, fresh: bool) -> Slots:
  """Writes tokens_at[a, :count_a[a]] into slot rows_a[a] (rows_a[a] = B: a filler row) and
  starts a segment there with key_a, budget_a and fences_a. fresh: the slots start empty (new
  prompts), else the tokens follow each slot's own last token."""
  TRACES["append"] += 1
  model = nnx.merge(graphdef, state)
  b, s = slots.valid.shape
  _, t = tokens_at.shape
  base = jnp.zeros_like(count_a) if fresh else jnp.take(slots.length, rows_a, mode="clip")
  positions = base[:, None] + jnp.arange(t, dtype=jnp.int32)[None, :]
  mask = jnp.arange(t)[None, :] < count_a[:, None]
  valid = slots.valid
  if fresh:
    valid = valid.at[rows_a].set(False, mode="drop")
    cache, visible = None, None
  else:
    visible = jnp.take(valid, rows_a, axis=0, mode="clip")
    cache = KVCache(_rows(slots.k, rows_a), _rows(slots.v, rows_a), visible, jnp.int32(0))
  logits, (k_new, v_new) = model.extend(tokens_at, positions, cache, visible, mask,
                                        at_b=jnp.maximum(count_a - 1, 0))
  if not fresh:  # a continuation of no tokens samples on from the slot's own logits
    logits = jnp.where((count_a > 0)[:, None], logits,
                       jnp.take(slots.logits, rows_a, axis=0, mode="clip"))
  pos = jnp.where(mask, positions, s)
  set_rows = lambda arr, x: arr.at[rows_a].set(x, mode="drop")
  return Slots(
      _put(slots.k, rows_a, pos, k_new), _put(slots.v, rows_a, pos, v_new),
      valid.at[rows_a[:, None], pos].set(True, mode="drop"),
      set_rows(slots.length, base + count_a), set_rows(slots.logits, logits),
      set_rows(slots.key, key_a), set_rows(slots.step, 0), set_rows(slots.budget, budget_a),
      set_rows(slots.fences, fences_a), set_rows(slots.running, True), set_rows(slots.reason, 0),
      set_rows(slots.recent, -2))


@functools.partial(jax.jit, static_argnums=(0, 1), static_argnames=("chunk", "greedy"),
                   donate_argnames=("slots",))
def _decode_chunk(graphdef, pad_id, state, slots: Slots, eos_e, fence_f, stops_sl, stop_lens_s,
                  banned_v, temperature, top_p, top_k, leave_idle, *, chunk: int,
                  greedy: bool):
  """Up to `chunk` steps over all slots, leaving early once none runs or once `leave_idle`
  slots (a traced int: B + 1 never) do not run: (slots, tokens [B, chunk], log-probs
  [B, chunk], tokens sampled per slot [B]); slot b's tokens of this chunk are
  tokens[b, :count[b]]."""
  TRACES["decode"] += 1
  model = nnx.merge(graphdef, state)
  b, s = slots.valid.shape
  r = slots.recent.shape[1]
  rows = jnp.arange(b)
  out = jnp.full((b, chunk), pad_id, jnp.int32)
  lps = jnp.zeros((b, chunk), jnp.float32)

  def cond(c):
    i, sl, *_ = c
    running = jnp.sum(sl.running)
    return (i < chunk) & (running > 0) & (b - running < leave_idle)

  def body(c):
    i, sl, out, lps, count = c
    run = sl.running
    keys = jax.vmap(jax.random.fold_in)(sl.key, sl.step)
    tok = sample_tokens(jnp.where(banned_v, -jnp.inf, sl.logits), keys, temperature, top_p,
                        top_k, greedy)
    tok = jnp.where(run, tok, pad_id)
    lp = jnp.take_along_axis(jax.nn.log_softmax(sl.logits), tok[:, None], 1)[:, 0]
    out = out.at[:, i].set(tok)
    lps = lps.at[:, i].set(jnp.where(run, lp, 0.0))
    recent = jnp.where(run[:, None], jnp.concatenate([sl.recent[:, 1:], tok[:, None]], 1),
                       sl.recent)
    is_eos = (jnp.any(tok[:, None] == eos_e[None, :], -1)
              | (sl.fences & jnp.any(tok[:, None] == fence_f[None, :], -1))) & run
    is_stop = stop_hit(recent, jnp.full((b,), r), stops_sl, stop_lens_s) & run & ~is_eos
    # The sampled token's keys and values go in at the slot's own position (a stopped slot's
    # position is S: nothing written), and its logits are the slot's next distribution.
    cache = KVCache(sl.k, sl.v, sl.valid, jnp.int32(0))
    logits, (k_new, v_new) = model.extend(tok[:, None], sl.length[:, None], cache, sl.valid)
    pos = jnp.where(run, sl.length, s)[:, None]
    length, step = sl.length + run, sl.step + run
    done = is_eos | is_stop | (step >= sl.budget) | (length >= s)
    # A stopped slot keeps the logits after its last token: a continuation may sample from them.
    logits = jnp.where(run[:, None], logits, sl.logits)
    sl = Slots(_put(sl.k, rows, pos, k_new), _put(sl.v, rows, pos, v_new),
               sl.valid.at[rows[:, None], pos].set(True, mode="drop"), length, logits, sl.key,
               step, sl.budget, sl.fences, run & ~done,
               jnp.where(is_eos, 1, jnp.where(is_stop, 2, sl.reason)), recent)
    return i + 1, sl, out, lps, count + run

  _, slots, out, lps, count = jax.lax.while_loop(
      cond, body, (jnp.int32(0), slots, out, lps, jnp.zeros((b,), jnp.int32)))
  return slots, out, lps, count


@jax.jit
def _repack(slots: Slots, rows_n) -> Slots:
  """The state of slots rows_n (n of them; an index B is an empty slot): fewer slots, so that
  a decoding tail does not compute every slot of the full batch."""
  TRACES["repack"] += 1
  b = slots.valid.shape[0]
  take = lambda x: jnp.take(x, rows_n, axis=0, mode="clip")
  return Slots(_rows(slots.k, rows_n), _rows(slots.v, rows_n), take(slots.valid),
               take(slots.length), take(slots.logits), take(slots.key), take(slots.step),
               take(slots.budget), take(slots.fences), take(slots.running) & (rows_n < b),
               take(slots.reason), take(slots.recent))


def pow2(n: int, floor: int = 1) -> int:
  """The smallest power of two >= n and >= floor."""
  return max(floor, 1 << (max(n, 1) - 1).bit_length())


def round_up(n: int, multiple: int) -> int:
  """The smallest multiple of `multiple` >= n (a batch split evenly over its shards)."""
  return -(-n // multiple) * multiple


def bucket(n: int, buckets: Sequence[int]) -> int:
  """The smallest of `buckets` (ascending) that holds n, else a multiple of the largest."""
  for b in buckets:
    if n <= b:
      return b
  return round_up(n, buckets[-1])


@dataclasses.dataclass
class _Pending:
  rid: Hashable
  tokens: list[int]
  seed: int
  sample: int
  budget: int
  fences: bool
  fresh: bool


class SlotBatch:
  """Trajectories decoded in a fixed number of slots, on `sampler`'s model and weights.

  `submit(rid, prompt, ...)` queues a new trajectory; it takes a free slot at the next `run`.
  `run()` admits what waits (prompts into free slots, continuations into their own slots), runs
  one decode chunk and returns [(rid, Completion)] for each segment that stopped in it, with
  its stop reason: "eos" (a stop token, or a fence token when the segment was submitted with
  fences=True), "stop" (a stop sequence) or "length" (its budget, or the slot's cache is full).
  A stopped trajectory keeps its slot and KV until `release(rid)`, or `resume(rid, tokens)`
  appends tokens after its last one (a tool output) and samples a new segment from there.
  A prompt or continuation that would not leave room to sample in the slot's `max_len`
  positions stops at once with "length", no token written. Once the trajectories held fit in
  a quarter of the slots, they move into fewer (a power of two, at least min_slots): the state
  is re-gathered, a trajectory's tokens do not change.

  params gives the sampling settings of every segment (temperature, top-p, top-k, stop tokens,
  stop sequences, banned tokens); its max_tokens, n and seed are unused (each segment has its
  budget, seed and sample index). fence_ids: the tokens that end a segment submitted with
  fences=True.
  """

  def __init__(self, sampler, params: SamplingParams, *, slots: int, max_len: int,
               fence_ids: Sequence[int] = (), chunk: int = 32, append_tokens: int = 16384,
               prompt_buckets: Sequence[int] | None = None, min_slots: int = 8):
    self.sampler, self.params, self.chunk = sampler, params, chunk
    self.shards = sampler.shards
    self.slots = round_up(slots, self.shards)
    self.min_slots = round_up(min_slots, self.shards)
    self.max_len = max_len
    self.append_tokens = append_tokens
    self.buckets = tuple(prompt_buckets or sampler.prompt_buckets)
    eos, stops, stop_lens, banned = stop_arrays(params, sampler.config.vocab_size)
    self._consts = (eos, np.array(tuple(fence_ids) or (-1,), np.int32), stops, stop_lens,
                    banned, jnp.float32(params.temperature), jnp.float32(params.top_p),
                    jnp.int32(params.top_k))
    with self._mesh():
      self.state = _init_slots(sampler.config, self.slots, max_len, stops.shape[1])
    self.free = list(range(self.slots))
    self.slot_of: dict[Hashable, int] = {}
    self.length = np.zeros(self.slots, np.int64)  # the device's length, mirrored
    self.waiting: collections.deque[_Pending] = collections.deque()
    self._waiting_ids: set = set()  # the rids in self.waiting
    self.live: dict[int, tuple[Hashable, list[int], list[float]]] = {}  # slot -> segment

  def _mesh(self):
    mesh = self.sampler.mesh
    return jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()

  @property
  def busy(self) -> bool:
    """Whether a segment waits or runs (parked trajectories do not count)."""
    return bool(self.waiting or self.live)

  def submit(self, rid: Hashable, prompt: Sequence[int], *, seed: int, sample: int = 0,
             budget: int, fences: bool = False) -> None:
    """A new trajectory `rid` (unique among those held) from `prompt`: its first segment
    samples at most `budget` tokens with the key of (seed, sample)."""
    if rid in self.slot_of or rid in self._waiting_ids:
      raise ValueError(f"SlotBatch.submit: trajectory {rid!r} is already held")
    if not prompt:
      raise ValueError(f"SlotBatch.submit: trajectory {rid!r} has an empty prompt")
    self.waiting.append(_Pending(rid, list(prompt), seed, sample, budget, fences, True))
    self._waiting_ids.add(rid)

  def resume(self, rid: Hashable, tokens: Sequence[int], *, seed: int, sample: int = 0,
             budget: int, fences: bool = False) -> None:
    """Appends `tokens` (maybe none) after stopped trajectory `rid`'s last token and samples a
    new segment of at most `budget` tokens with the key of (seed, sample)."""
    slot = self.slot_of.get(rid)
    if slot is None or slot in self.live or rid in self._waiting_ids:
      raise ValueError(f"SlotBatch.resume: trajectory {rid!r} is not stopped in a slot")
    self.waiting.append(_Pending(rid, list(tokens), seed, sample, budget, fences, False))
    self._waiting_ids.add(rid)

  def release(self, rid: Hashable) -> None:
    """Frees stopped trajectory `rid`'s slot for a waiting one."""
    slot = self.slot_of.get(rid)
    if slot is None or slot in self.live or rid in self._waiting_ids:
      raise ValueError(f"SlotBatch.release: trajectory {rid!r} is not stopped in a slot")
    del self.slot_of[rid]
    self.free.append(slot)

  def run(self) -> list[tuple[Hashable, Completion]]:
    """Admits what waits, runs one decode chunk; the segments that stopped, in slot order."""
    stopped = self.admit()
    fresh = sum(p.fresh for p in self.waiting)  # new trajectories still waiting for a slot
    self._shrink(fresh)
    if self.live:
      stopped += self._decode(fresh)
    return stopped

  def _shrink(self, fresh: int) -> None:
    """Moves the trajectories held into a quarter of the slots or fewer (a power of two, at
    least min_slots) once they fit there: a step costs every slot, busy or not."""
    held = len(self.slot_of) + fresh
    size = round_up(max(self.min_slots, pow2(held)), self.shards)
    if 4 * size > self.slots:
      return
    old = sorted(self.slot_of.values())
    where = {slot: j for j, slot in enumerate(old)}
    rows = np.full((size,), self.slots, np.int32)
    rows[:len(old)] = old
    with self._mesh():
      self.state = _repack(self.state, rows)
    self.slot_of = {rid: where[slot] for rid, slot in self.slot_of.items()}
    self.live = {where[slot]: seg for slot, seg in self.live.items()}
    length = np.zeros(size, np.int64)
    length[:len(old)] = self.length[old]
    self.length, self.slots = length, size
    self.free = list(range(len(old), size))

  def admit(self) -> list[tuple[Hashable, Completion]]:
    """What `run` does first: writes the waiting prompts and continuations that can go in (a
    new trajectory needs a free slot) and starts their segments; returns those that stopped at
    once ("length": no budget, or no room in the slot)."""
    stopped, groups, keep = [], collections.defaultdict(list), collections.deque()
    for p in self.waiting:
      if p.fresh and not self.free:
        keep.append(p)
        continue
      base = 0 if p.fresh else int(self.length[self.slot_of[p.rid]])
      if p.fresh:
        self.slot_of[p.rid] = self.free.pop(0)
      if p.budget <= 0 or base + len(p.tokens) >= self.max_len:
        stopped.append((p.rid, Completion((), (), "length")))
        continue
      groups[(p.fresh, bucket(max(len(p.tokens), 1), self.buckets))].append(p)
    self.waiting, self._waiting_ids = keep, {p.rid for p in keep}
    for (fresh, t), items in groups.items():
      per_call = max(self.shards, pow2(self.append_tokens // t + 1) // 2)
      for start in range(0, len(items), per_call):
        self._append_call(items[start:start + per_call], t, fresh)
    return stopped

  def _append_call(self, items: list[_Pending], t: int, fresh: bool) -> None:
    a = round_up(pow2(len(items), min(self.min_slots, self.slots)), self.shards)
    rows = np.full((a,), self.slots, np.int32)
    tokens = np.full((a, t), self.sampler.pad_id, np.int32)
    count = np.zeros((a,), np.int32)
    seeds, samples = np.zeros((a,), np.uint32), np.zeros((a,), np.int32)
    budget, fences = np.zeros((a,), np.int32), np.zeros((a,), bool)
    for i, p in enumerate(items):
      slot = self.slot_of[p.rid]
      rows[i], count[i], budget[i], fences[i] = slot, len(p.tokens), p.budget, p.fences
      tokens[i, :len(p.tokens)] = p.tokens
      seeds[i], samples[i] = p.seed % 2**32, p.sample
      self.length[slot] = (0 if fresh else self.length[slot]) + len(p.tokens)
      self.live[slot] = (p.rid, [], [])
      self.sampler.prefilled_tokens += len(p.tokens)
    keys = row_keys(seeds, samples)
    with self._mesh():
      self.state = _append(self.sampler.graphdef, self.sampler.state, self.state, rows, tokens,
                           count, keys, budget, fences, fresh=fresh)

  def _leave_idle(self, fresh: int) -> int:
    """When the decode chunk leaves early: while new trajectories wait for a slot, once
    min(waiting, slots / 2) more of its slots have stopped (the waiting take them at the next
    `run`; a slot idles until then), else never (slots + 1). Measured on the demo's E-step
    workload (2 CPU cores; the issue 35 note): leaving once slots / 8 had stopped made chunks
    of 1-4 steps whose admissions cost more than the idle slots; slots / 2 was the fastest
    of 8, 4 and 2."""
    if not fresh:
      return self.slots + 1
    return self.slots - len(self.live) + max(1, min(fresh, self.slots // 2))

  def _decode(self, fresh: int) -> list[tuple[Hashable, Completion]]:
    greedy = bool(self.params.temperature == 0)
    with self._mesh():
      self.state, out, lps, count = _decode_chunk(
          self.sampler.graphdef, self.sampler.pad_id, self.sampler.state, self.state,
          *self._consts, jnp.int32(self._leave_idle(fresh)), chunk=self.chunk, greedy=greedy)
    out, lps, count, running, reason = jax.device_get(
        (out, lps, count, self.state.running, self.state.reason))
    stopped = []
    for slot in sorted(self.live):
      rid, toks, lp = self.live[slot]
      n = int(count[slot])
      toks.extend(int(x) for x in out[slot, :n])
      lp.extend(float(x) for x in lps[slot, :n])
      self.length[slot] += n
      if not running[slot]:
        del self.live[slot]
        stopped.append((rid, Completion(tuple(toks), tuple(lp), REASONS[int(reason[slot])])))
    return stopped
