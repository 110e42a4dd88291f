"""Train-step throughput, MFU and peak memory on a randomly initialised model.

  python benchmarks/train_step_bench.py                                  # Qwen2.5-0.5B shape, GPU
  python benchmarks/train_step_bench.py --preset=tiny-qwen2 --settings=256x8   # on a CPU

Each setting is SEQxMICRO_BATCH. One step = one micro-batch of policy-loss forward + backward +
AdamW update (fp32 master weights, bf16 compute, full remat). MFU = model FLOPs / step time /
the bf16 matmul peak measured here, in the same run. On a GPU, run it in the same call as
../shared/bench/peer_hf_torch.py --seq 1024 --batch 8.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from autocode_jax.models import init_model, preset
from autocode_jax.training.optimizers import OptimizerConfig, build_optimizer
from autocode_jax.training.step import LossConfig, init_train_state, make_train_step

_PRESET = flags.DEFINE_string("preset", "qwen2.5-0.5b", "model preset")
_SETTINGS = flags.DEFINE_list("settings", ["1024x8", "4096x2"], "SEQxMICRO_BATCH settings")
_DTYPE = flags.DEFINE_string("dtype", "bfloat16", "compute dtype")
_REMAT = flags.DEFINE_string("remat", "full", "remat policy")
_CHUNK = flags.DEFINE_integer("chunk", 512, "log-prob chunk")
_ITERS = flags.DEFINE_integer("iters", 5, "timed steps")


def matmul_peak(dtype=jnp.bfloat16) -> float:
  """Measured FLOP/s of a large square matmul on device 0."""
  n = 8192 if jax.devices()[0].platform != "cpu" else 1024
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x: x @ x)
  jax.block_until_ready(f(a))
  iters = 20 if n == 8192 else 3
  start = time.perf_counter()
  for _ in range(iters):
    out = f(a)
  jax.block_until_ready(out)
  return 2 * n ** 3 * iters / (time.perf_counter() - start)


def train_flops_per_token(cfg, seq: int) -> float:
  """6 x matmul parameters (blocks and the vocabulary projection) + attention scores and values,
  forward and backward (12 L H E T)."""
  c = cfg
  per_layer = (c.hidden_size * c.head_dim * (c.num_heads * 2 + c.num_kv_heads * 2)
               + 3 * c.hidden_size * c.intermediate_size)
  n = c.num_layers * per_layer + c.hidden_size * c.vocab_size
  return 6 * n + 12 * c.num_layers * c.num_heads * c.head_dim * seq


def synthetic_batch(b, t, vocab, seed=0):
  r = np.random.RandomState(seed)
  mask = np.ones((b, t), np.float32)
  return {"tokens": r.randint(0, vocab, (b, t)).astype(np.int32), "attention_mask": mask,
          "policy_mask": mask, "prefix_mask": np.zeros_like(mask),
          "old_logprobs": np.full((b, t), -3.0, np.float32),
          "advantages": r.randn(b).astype(np.float32)}


def peak_bytes() -> str:
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return f"{stats['peak_bytes_in_use'] / 2**30:.2f} GiB"
  return "n/a"


def main(_):
  dev = jax.devices()[0]
  peak = matmul_peak()
  print(f"device: {jax.device_count()}x {dev.device_kind}; measured bf16 matmul peak "
        f"{peak / 1e12:.1f} TFLOP/s")
  for setting in _SETTINGS.value:
    seq, mb = (int(x) for x in setting.split("x"))
    cfg = preset(_PRESET.value, dtype=_DTYPE.value, remat=_REMAT.value, logprob_chunk=_CHUNK.value)
    graphdef, params = nnx.split(init_model(cfg))
    opt, sched = build_optimizer(OptimizerConfig(learning_rate=1e-6), params)
    state, _ = init_train_state(params, opt)
    step = make_train_step(graphdef, opt, sched, LossConfig())
    batch = {k: jnp.asarray(v) for k, v in synthetic_batch(mb, seq, cfg.vocab_size).items()}
    mem = step.lower(state, batch).compile().memory_analysis()
    state, m = step(state, batch)
    jax.block_until_ready(m)
    start = time.perf_counter()
    for _ in range(_ITERS.value):
      state, m = step(state, batch)
    jax.block_until_ready(m)
    dt = (time.perf_counter() - start) / _ITERS.value
    tokens = mb * seq
    mfu = train_flops_per_token(cfg, seq) * tokens / dt / peak
    print(f"{_PRESET.value} seq {seq} x micro-batch {mb}: {dt * 1e3:9.1f} ms/step, "
          f"{tokens / dt:10.0f} tokens/s, MFU {100 * mfu:5.1f}%, peak memory {peak_bytes()}, "
          f"compiled temp {mem.temp_size_in_bytes / 2**30:.2f} GiB")
    del state


if __name__ == "__main__":
  app.run(main)
