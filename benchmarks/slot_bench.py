"""The built-in sampler's rollout slots (continuous batching) against its static batch, on a
long-tail generation workload, side by side in one run.

  python benchmarks/slot_bench.py                                            # GPU: 0.5B shape
  python benchmarks/slot_bench.py --preset=tiny-qwen2 --vocab_size=151936    # a CPU

The workload: `rows` prompts of 64-256 tokens (uniform), and per row a response length L_i
drawn from a log-normal of median `median` tokens and sigma `sigma`, clipped to
[16, max_tokens]: right-skewed like a math policy's responses (most stop after a few hundred
tokens, a few run to the limit; with the defaults 4% reach max_tokens = 1024). Row i ends after
L_i tokens in both engines. The slot engine gives row i the budget L_i (it frees the slot
then, as it does on an EOS); the static batch runs max(L_i) steps with every row in the batch,
which is what it runs when the last EOS comes at max(L_i) (a row that ended computes masked
steps until the longest ends), and sum(L_i) tokens count as generated for both. Sampling at
T=1, top-p 0.9; each engine runs once to compile (the static batch: one step of the same
program; the slots: the whole workload, which compiles every append bucket it meets), then
once timed.
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from autocode_jax.models import init_model, preset
from autocode_jax.rollout import JaxSampler, SamplingParams, jax_sampler
from autocode_jax.rollout.slots import bucket

_PRESET = flags.DEFINE_string("preset", "qwen2.5-0.5b", "model preset")
_VOCAB = flags.DEFINE_integer("vocab_size", 0, "override the preset's vocabulary (0: keep)")
_DTYPE = flags.DEFINE_string("dtype", "bfloat16", "parameter and compute dtype")
_ROWS = flags.DEFINE_integer("rows", 64, "rows (trajectories) in the workload")
_MAX = flags.DEFINE_integer("max_tokens", 1024, "the most tokens a row generates")
_MEDIAN = flags.DEFINE_float("median", 256.0, "median response length (tokens)")
_SIGMA = flags.DEFINE_float("sigma", 0.8, "log-normal sigma of the response lengths")
_SLOTS = flags.DEFINE_list("slots", ["16", "32", "64"], "slot counts of the slot engine")
_CHUNK = flags.DEFINE_integer("chunk", 32, "decode steps per host round trip")
_SEED = flags.DEFINE_integer("seed", 0, "workload seed")


def workload(vocab: int):
  rng = np.random.RandomState(_SEED.value)
  prompts = [[int(t) for t in rng.randint(0, vocab, rng.randint(64, 257))]
             for _ in range(_ROWS.value)]
  lengths = np.clip(np.round(_MEDIAN.value * np.exp(_SIGMA.value * rng.randn(_ROWS.value))),
                    16, _MAX.value).astype(int)
  return prompts, [int(x) for x in lengths]


def run_static(sampler, prompts, lengths, params, warm: bool = False):
  params = dataclasses.replace(params, max_tokens=max(lengths))
  if warm:  # compile the same program (same buckets) and run one step of it
    args, kw = sampler.program_call(prompts, params)
    jax.block_until_ready(jax_sampler._generate(*args[:-2], jnp.int32(1), args[-1], **kw))
    return 0
  out = sampler.generate_static(prompts, params)
  assert all(len(c[0].token_ids) == max(lengths) for c in out)
  return sum(lengths)


def run_slots(sampler, prompts, lengths, params, slots: int):
  max_len = bucket(max(map(len, prompts)), sampler.prompt_buckets) + _MAX.value
  batch = sampler.slot_batch(params, slots=slots, max_len=max_len)
  for i, (p, n) in enumerate(zip(prompts, lengths)):
    batch.submit(i, p, seed=params.seed + i, budget=n)
  made = 0
  while batch.busy:
    for i, comp in batch.run():
      assert len(comp.token_ids) == lengths[i], (i, len(comp.token_ids), lengths[i])
      made += len(comp.token_ids)
      batch.release(i)
  return made


def timed(fn, warm=None):
  (warm or fn)()  # compile
  start = time.perf_counter()
  made = fn()
  return made, time.perf_counter() - start


def main(_):
  settings = {"param_dtype": _DTYPE.value, "dtype": _DTYPE.value}
  cfg = preset(_PRESET.value, **settings)
  if _VOCAB.value:
    cfg = cfg.replace(vocab_size=_VOCAB.value)
  sampler = JaxSampler(init_model(cfg), chunk=_CHUNK.value)
  prompts, lengths = workload(cfg.vocab_size)
  params = SamplingParams(temperature=1.0, top_p=0.9, seed=0)
  print(f"device: {jax.device_count()}x {jax.devices()[0].device_kind}; {_PRESET.value} "
        f"(vocab {cfg.vocab_size}, {_DTYPE.value}); {_ROWS.value} rows, prompts 64-256, "
        f"lengths log-normal median {_MEDIAN.value:g} sigma {_SIGMA.value:g} in [16, "
        f"{_MAX.value}]: mean {np.mean(lengths):.0f}, max {max(lengths)}, "
        f"{np.mean(np.array(lengths) == _MAX.value):.0%} at the limit; chunk {_CHUNK.value}")
  made, dt = timed(lambda: run_static(sampler, prompts, lengths, params),
                   lambda: run_static(sampler, prompts, lengths, params, warm=True))
  base = made / dt
  print(f"{'static batch (old generate)':34s} {dt:8.2f} s {base:10.1f} tokens/s   1.00x")
  for s in (int(x) for x in _SLOTS.value):
    made, dt = timed(lambda: run_slots(sampler, prompts, lengths, params, s))
    print(f"{f'slots: {s:3d}':34s} {dt:8.2f} s {made / dt:10.1f} tokens/s "
          f"{made / dt / base:6.2f}x")


if __name__ == "__main__":
  app.run(main)
