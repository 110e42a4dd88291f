"""JaxSampler generation throughput on a randomly initialised model, and the memory-bandwidth
bound it is measured against.

  python benchmarks/rollout_bench.py                                   # Qwen2.5-0.5B shape, GPU
  python benchmarks/rollout_bench.py --preset=tiny-qwen2 --batches=8,32  # on a CPU

Prompt 128 tokens, 256 new tokens, T=1.0, top-p 0.9 by default. The bound: every decoding step
reads all weights and the live KV cache, so tokens/s <= batch x bandwidth / bytes per step, with
the bandwidth measured here by a large device copy in the same run. On a GPU, run it in the same
call as ../shared/bench/peer_hf_torch.py.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from autocode_jax.models import count_params, init_model, preset
from autocode_jax.rollout import JaxSampler, SamplingParams

_PRESET = flags.DEFINE_string("preset", "qwen2.5-0.5b", "model preset")
_BATCHES = flags.DEFINE_list("batches", ["64", "256"], "rows per generate call")
_PROMPT = flags.DEFINE_integer("prompt_len", 128, "prompt tokens")
_NEW = flags.DEFINE_integer("new_tokens", 256, "generated tokens")
_DTYPE = flags.DEFINE_string("dtype", "bfloat16", "parameter and compute dtype")


def bandwidth() -> float:
  """Bytes/s of a device-to-device copy (read + write counted)."""
  n = 2**28 if jax.devices()[0].platform != "cpu" else 2**25
  x = jnp.ones((n,), jnp.float32)
  f = jax.jit(lambda a: a * 1.0001)
  jax.block_until_ready(f(x))
  start = time.perf_counter()
  for _ in range(10):
    y = f(x)
  jax.block_until_ready(y)
  return 2 * 4 * n * 10 / (time.perf_counter() - start)


def main(_):
  cfg = preset(_PRESET.value, param_dtype=_DTYPE.value, dtype=_DTYPE.value)
  sampler = JaxSampler(init_model(cfg))
  bw = bandwidth()
  item = jnp.dtype(_DTYPE.value).itemsize
  weight_bytes = count_params(cfg) * item
  print(f"device: {jax.device_count()}x {jax.devices()[0].device_kind}; measured bandwidth "
        f"{bw / 1e9:.0f} GB/s; {_PRESET.value} weights {weight_bytes / 2**30:.2f} GiB")
  params = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=_NEW.value, seed=0)
  rng = np.random.RandomState(0)
  for b in (int(x) for x in _BATCHES.value):
    prompts = [list(rng.randint(0, cfg.vocab_size, _PROMPT.value)) for _ in range(b)]
    sampler.generate(prompts, params)  # compile
    start = time.perf_counter()
    out = sampler.generate(prompts, params)
    dt = time.perf_counter() - start
    generated = sum(len(c[0].token_ids) for c in out)
    kv_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * item
    avg_ctx = _PROMPT.value + _NEW.value / 2
    step_bytes = weight_bytes + b * avg_ctx * kv_per_token
    bound = b * bw / step_bytes
    print(f"batch {b:4d}: {generated / dt:10.0f} generated tokens/s "
          f"({100 * generated / dt / bound:5.1f}% of the bandwidth bound {bound:,.0f} tokens/s)")


if __name__ == "__main__":
  app.run(main)
