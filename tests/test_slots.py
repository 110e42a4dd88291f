"""The rollout slots (continuous batching with KV continuation): a continuation equals a fresh
prefill, a reused slot a fresh one, a trajectory does not depend on what else is in flight,
overflow ends a row and nothing else, one trace per program and bucket, and sharding changes
nothing; `generate` on the slots gives what the static batch gives."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from autocode_jax.models import init_model, make_mesh, preset, shard_state
from autocode_jax.rollout import JaxSampler, SamplingParams
from autocode_jax.rollout import slots as slots_lib

SAMPLED = SamplingParams(temperature=1.0, top_p=0.9, stop_token_ids=(7,))
GREEDY = SamplingParams(temperature=0)
FENCES = (11, 12, 13)


@pytest.fixture(scope="module")
def model():
  return init_model(preset("tiny-qwen2"), seed=1)


def _prompts(n, seed=0):
  rng = np.random.RandomState(seed)
  return [[int(t) for t in rng.randint(20, 500, rng.randint(3, 30))] for _ in range(n)]


def _drain(batch):
  """rid -> Completion of every segment until nothing runs; releases each trajectory."""
  out = {}
  while batch.busy:
    for rid, comp in batch.run():
      out[rid] = comp
      batch.release(rid)
  return out


def _one(sampler, prompt, params, *, seed, budget=40, slots=1, max_len=128, fences=False):
  batch = sampler.slot_batch(params, slots=slots, max_len=max_len, fence_ids=FENCES)
  batch.submit("x", prompt, seed=seed, budget=budget, fences=fences)
  return _drain(batch)["x"]


def test_logits_after_an_append_equal_a_fresh_prefill_of_the_whole_context(model):
  """A trajectory stops on a fence, a tool output is appended after its own last token: the
  slot's next-token logits equal those of one forward over prompt + sampled + appended tokens
  (fp32, atol 1e-4), and its greedy continuation is what a fresh prompt of that context gives."""
  sampler = JaxSampler(model)
  prompt, tool = _prompts(1)[0], [40, 41, 42, 43, 44, 45, 46]
  batch = sampler.slot_batch(SAMPLED, slots=4, max_len=128, fence_ids=FENCES)
  batch.submit("a", prompt, seed=3, budget=30, fences=True)
  batch.submit("b", _prompts(2, 1)[1], seed=4, budget=30)  # a neighbour in flight
  first = {}
  while "a" not in first:
    first.update(batch.run())
  assert first["a"].token_ids
  batch.resume("a", tool, seed=5, budget=20)
  batch.admit()
  slot = batch.slot_of["a"]
  context = prompt + list(first["a"].token_ids) + tool
  want = model(jnp.asarray([context]))[0, -1]
  got = batch.state.logits[slot]
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4, rtol=0)
  assert int(batch.state.length[slot]) == len(context) == batch.length[slot]

  # Sampling on from there equals sampling from a fresh prompt of the whole context.
  cont = sampler.slot_batch(GREEDY, slots=2, max_len=128)
  cont.submit("p", prompt, seed=0, budget=5)
  head = _drain_keep(cont, "p")
  cont.resume("p", tool, seed=0, budget=12)
  after = _drain(cont)["p"]
  fresh = _one(sampler, prompt + list(head.token_ids) + tool, GREEDY, seed=0, budget=12)
  assert len(after.token_ids) == 12 and after.token_ids == fresh.token_ids
  np.testing.assert_allclose(after.logprobs, fresh.logprobs, atol=1e-4)


def _drain_keep(batch, rid):
  """Runs until `rid` stops; keeps its slot (no release)."""
  while True:
    for r, comp in batch.run():
      if r == rid:
        return comp


def test_a_reused_slot_gives_what_a_fresh_slot_gives(model):
  """One slot, three trajectories through it in turn (each resumed once): the third equals
  itself alone in a new batch, bit for bit (a reused slot's old keys are all invalid)."""
  sampler = JaxSampler(model)
  prompts = _prompts(3, 2)
  batch = sampler.slot_batch(SAMPLED, slots=1, max_len=160, fence_ids=FENCES)
  got = {}
  for i, p in enumerate(prompts):
    batch.submit(i, p, seed=10 + i, budget=50)
    got[i] = _drain(batch)[i]
  fresh = _one(sampler, prompts[2], SAMPLED, seed=12, budget=50, max_len=160)
  assert got[2] == fresh
  assert len({c.token_ids for c in got.values()}) == 3


def test_a_trajectory_does_not_depend_on_what_else_is_in_flight(model):
  """The same (prompt, seed, sample) alone in one slot, among 15 others in 4 slots (admitted
  late, so it gets another slot mid-run), and first among them: the same tokens, and log-probs
  within 1e-5 (the batch shape differs, so a float may round differently)."""
  sampler = JaxSampler(model)
  target = _prompts(1, 3)[0]
  alone = _one(sampler, target, SAMPLED, seed=77, budget=60, max_len=128)
  others = _prompts(15, 4)
  for order in ("last", "first"):
    batch = sampler.slot_batch(SAMPLED, slots=4, max_len=128)
    if order == "first":
      batch.submit("t", target, seed=77, budget=60)
    for i, p in enumerate(others):
      batch.submit(i, p, seed=i, budget=60)
    if order == "last":
      batch.submit("t", target, seed=77, budget=60)
    got = _drain(batch)["t"]
    assert got.token_ids == alone.token_ids and got.stop_reason == alone.stop_reason, order
    np.testing.assert_allclose(got.logprobs, alone.logprobs, atol=1e-5)
  # A different seed or sample index does change it (the test can fail).
  batch = sampler.slot_batch(SAMPLED, slots=2, max_len=128)
  batch.submit("s", target, seed=77, sample=1, budget=60)
  assert _drain(batch)["s"].token_ids != alone.token_ids


def test_writing_past_the_cache_ends_the_row_with_length_and_corrupts_no_other(model):
  """A trajectory in a 48-position slot stops with "length" when the slot is full (before its
  budget); a continuation that would not fit stops at once, nothing written; the neighbour in
  flight and the next trajectory in the overflowed slot are what they are alone."""
  sampler = JaxSampler(model)
  long_p, other_p, next_p = _prompts(3, 5)
  params = SamplingParams(temperature=1.0)  # no stop token: only length ends a row
  batch = sampler.slot_batch(params, slots=2, max_len=48)
  batch.submit("long", long_p, seed=1, budget=200)
  batch.submit("other", other_p, seed=2, budget=20)
  got = {}
  while batch.busy:
    got.update(batch.run())
  assert got["long"].stop_reason == "length"
  assert len(long_p) + len(got["long"].token_ids) == 48
  batch.resume("long", [5, 6, 7], seed=3, budget=10)
  assert batch.run() == [("long", slots_lib.Completion((), (), "length"))]
  assert int(batch.state.length[batch.slot_of["long"]]) == 48  # nothing written
  # Alone in a batch of the same shape, bit for bit.
  assert got["other"] == _one(sampler, other_p, params, seed=2, budget=20, slots=2, max_len=48)
  batch.release("other")
  batch.release("long")
  batch.submit("next", next_p, seed=4, budget=20)
  batch.submit("after", next_p, seed=4, budget=20)
  nxt = _drain(batch)
  assert nxt["next"] == nxt["after"] == _one(sampler, next_p, params, seed=4, budget=20,
                                             slots=2, max_len=48)
  # A prompt that fills the slot stops at once too, holding a slot until released.
  batch.submit("huge", list(range(1, 49)), seed=0, budget=5)
  assert batch.run() == [("huge", slots_lib.Completion((), (), "length"))]


def test_one_trace_per_program_and_bucket(model):
  """Two batches of the same slots and cache length, prompts in the same length bucket: the
  second traces nothing. Continuations of another bucket trace one more append program."""
  sampler = JaxSampler(model)

  def once(seed):
    batch = sampler.slot_batch(SAMPLED, slots=4, max_len=96, fence_ids=FENCES)
    for i, p in enumerate(_prompts(9, seed)):
      batch.submit(i, p, seed=i, budget=30, fences=True)
    n = 0
    while batch.busy:
      for rid, comp in batch.run():
        if n < 6 and comp.stop_reason == "eos" and len(comp.token_ids) < 40:
          n += 1
          batch.resume(rid, [40, 41, 42], seed=n, budget=10)
        else:
          batch.release(rid)
    return n

  assert once(6) > 0
  before = dict(slots_lib.TRACES)
  assert once(7) > 0
  assert dict(slots_lib.TRACES) == before
  # A new bucket (prompts of 33..64 tokens) is one new fresh-append program and nothing else.
  batch = sampler.slot_batch(SAMPLED, slots=4, max_len=96, fence_ids=FENCES)
  batch.submit("a", list(range(20, 60)), seed=0, budget=10)
  _drain(batch)
  assert slots_lib.TRACES["append"] == before["append"] + 1
  assert slots_lib.TRACES["decode"] == before["decode"]


def test_sharded_slots_equal_single_device(model):
  """On a 2x2x2 mesh (8 simulated devices; slots and append rows rounded to 4 shards) the
  trajectories, continuations included, are the single-device ones."""
  mesh = make_mesh(2, 2, 2, devices=jax.devices()[:8])
  graphdef, state = nnx.split(model)
  sharded = JaxSampler(nnx.merge(graphdef, shard_state(state, mesh)), mesh=mesh)
  single = JaxSampler(model)

  def roll(sampler):
    batch = sampler.slot_batch(SAMPLED, slots=3, max_len=128, fence_ids=FENCES)
    for i, p in enumerate(_prompts(6, 8)):
      batch.submit(i, p, seed=i, budget=40, fences=True)
    out, resumed = {}, set()
    while batch.busy:
      for rid, comp in batch.run():
        out.setdefault(rid, []).append(comp)
        if rid not in resumed and comp.stop_reason == "eos":
          resumed.add(rid)
          batch.resume(rid, [40, 41], seed=100 + rid, budget=20)
        else:
          batch.release(rid)
    return out, resumed

  (a, ra), (b, rb) = roll(single), roll(sharded)
  assert ra == rb and ra  # some trajectory was continued
  assert {k: [c.token_ids for c in v] for k, v in a.items()} == \
      {k: [c.token_ids for c in v] for k, v in b.items()}


def test_generate_on_the_slots_equals_the_static_batch(model):
  """`generate` (80 rows through 16 slots) and `generate_static` (one batch): the same tokens
  and stop reasons, log-probs within 1e-5."""
  sampler = JaxSampler(model, max_slots=16)
  prompts = _prompts(40, 9)
  params = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=40, n=2, seed=5,
                          stop_token_ids=(7, 9, 11))
  slots, static = sampler.generate(prompts, params), sampler.generate_static(prompts, params)
  assert [[c.token_ids for c in r] for r in slots] == [[c.token_ids for c in r] for r in static]
  assert [[c.stop_reason for c in r] for r in slots] == \
      [[c.stop_reason for c in r] for r in static]
  assert {c.stop_reason for r in slots for c in r} == {"eos", "length"}
  for r, q in zip(slots, static):
    for c, d in zip(r, q):
      np.testing.assert_allclose(c.logprobs, d.logprobs, atol=1e-5)


def test_the_slots_shrink_as_trajectories_end_and_tokens_stay(model):
  """16 trajectories of budgets 8..128 in 16 slots (min_slots 1): as they end, the batch moves
  into 4 slots or fewer (the state re-gathered, counted), and each trajectory, continuations
  included, samples what it samples without shrinking (tokens and stop reasons identical,
  log-probs within 1e-5)."""
  sampler = JaxSampler(model)
  prompts = _prompts(16, 10)

  def roll(min_slots):
    batch = sampler.slot_batch(SAMPLED, slots=16, max_len=192, fence_ids=FENCES,
                               min_slots=min_slots)
    for i, p in enumerate(prompts):
      batch.submit(i, p, seed=i, budget=8 * (i + 1), fences=True)
    out, sizes = {}, set()
    while batch.busy:
      for rid, comp in batch.run():
        out.setdefault(rid, []).append(comp)
        if len(out[rid]) == 1 and comp.stop_reason == "eos":
          batch.resume(rid, [40, 41], seed=50 + rid, budget=10)
        else:
          batch.release(rid)
      sizes.add(batch.slots)
    return out, sizes

  before = slots_lib.TRACES["repack"]
  fixed, fixed_sizes = roll(16)
  shrunk, sizes = roll(1)
  assert fixed_sizes == {16} and min(sizes) <= 4 and slots_lib.TRACES["repack"] > before
  assert sum(len(v) > 1 for v in shrunk.values()) > 0  # some trajectory was continued
  for rid in fixed:
    assert [(c.token_ids, c.stop_reason) for c in shrunk[rid]] == \
        [(c.token_ids, c.stop_reason) for c in fixed[rid]]
    for c, d in zip(shrunk[rid], fixed[rid]):
      np.testing.assert_allclose(c.logprobs, d.logprobs, atol=1e-5)


def test_a_chunk_leaves_early_for_waiting_trajectories(model):
  """8 slots, chunk 32: 4 trajectories of budget 2 and 4 of budget 30 decode, 4 more wait.
  Once the short ones have stopped (half the slots), the chunk leaves, so the waiting take
  their slots after 2 steps, not 30; with nothing waiting the chunk runs on. The tokens are
  those of each trajectory alone."""
  sampler = JaxSampler(model, chunk=32)
  prompts = _prompts(12, 20)
  params = SamplingParams(temperature=1.0, top_p=0.9)  # no stop tokens: budgets end them
  batch = sampler.slot_batch(params, slots=8, max_len=96, min_slots=8)
  for i, p in enumerate(prompts):
    batch.submit(i, p, seed=i, budget=2 if i < 4 else 30)
  first = dict(batch.run())
  assert sorted(first) == [0, 1, 2, 3]
  assert all(len(batch.live[s][1]) == 2 for s in batch.live)  # the long ones: 2 tokens so far
  for rid in first:
    batch.release(rid)
  second = dict(batch.run())  # the 4 waiting took the freed slots; nothing waits now
  assert sorted(second) == list(range(4, 12))  # one chunk: 28 and 30 steps
  out = {**first, **second}
  assert sorted(out) == list(range(12))
  for i in (0, 5, 9):
    alone = _one(sampler, prompts[i], params, seed=i, budget=2 if i < 4 else 30, slots=8,
                 max_len=96)
    assert out[i].token_ids == alone.token_ids
