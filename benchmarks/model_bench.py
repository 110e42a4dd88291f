"""Prints compiled peak temporary memory of the log-prob gradient, chunked vs full-vocab logits,
and (with --run) forward and log-prob-gradient tokens/s on the current devices.

  python benchmarks/model_bench.py --preset=qwen2.5-0.5b --batch=8 --seq=1024     # memory only
  python benchmarks/model_bench.py --preset=tiny-qwen2 --run                       # + timings

Memory figures come from XLA's compiled memory analysis of abstract shapes: nothing is allocated,
so the 0.5B/7B figures are cheap to get on a CPU. Timings are only meaningful on an accelerator.
"""

import time

from absl import app, flags

import jax
import jax.numpy as jnp
from flax import nnx

from autocode_jax.models import abstract_model, init_model, preset, token_logprobs

_PRESET = flags.DEFINE_string("preset", "qwen2.5-0.5b", "model preset")
_BATCH = flags.DEFINE_integer("batch", 8, "sequences per batch")
_SEQ = flags.DEFINE_integer("seq", 1024, "sequence length")
_CHUNK = flags.DEFINE_integer("chunk", 512, "log-prob chunk")
_DTYPE = flags.DEFINE_string("dtype", "bfloat16", "compute dtype (parameters stay fp32)")
_REMAT = flags.DEFINE_string("remat", "full", "remat policy")
_RUN = flags.DEFINE_bool("run", False, "also allocate and time forward / gradient")
_ITERS = flags.DEFINE_integer("iters", 5, "timed iterations")


def _grad_fn(cfg):
  graphdef, _ = nnx.split(abstract_model(cfg))

  def loss(state, tokens):
    return token_logprobs(graphdef, state, tokens[:, :-1], tokens[:, 1:]).mean()

  return jax.jit(jax.grad(loss))


def main(_):
  b, t = _BATCH.value, _SEQ.value
  tokens = jax.ShapeDtypeStruct((b, t + 1), jnp.int32)
  print(f"preset={_PRESET.value} batch={b} seq={t} dtype={_DTYPE.value} remat={_REMAT.value} "
        f"devices={jax.device_count()}x{jax.devices()[0].device_kind}")
  temps = {}
  for chunk in (_CHUNK.value, t):
    cfg = preset(_PRESET.value, dtype=_DTYPE.value, remat=_REMAT.value, logprob_chunk=chunk)
    abstract = nnx.state(abstract_model(cfg))
    mem = _grad_fn(cfg).lower(abstract, tokens).compile().memory_analysis()
    temps[chunk] = mem.temp_size_in_bytes if mem is not None else float("nan")
    label = "full logits" if chunk == t else f"chunk {chunk}"
    print(f"  grad temp memory, {label:>12}: {temps[chunk] / 2**30:8.2f} GiB")
  print(f"  ratio full / chunked: {temps[t] / temps[_CHUNK.value]:.2f}x")

  if not _RUN.value:
    return
  cfg = preset(_PRESET.value, dtype=_DTYPE.value, remat=_REMAT.value, logprob_chunk=_CHUNK.value)
  model = init_model(cfg)
  graphdef, state = nnx.split(model)
  toks = jnp.zeros((b, t + 1), jnp.int32)
  fwd = jax.jit(lambda s, x: nnx.merge(graphdef, s).hidden_states(x))
  grad = _grad_fn(cfg)
  for name, fn, args in (("forward", fwd, (state, toks[:, :-1])), ("logprob grad", grad, (state, toks))):
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(_ITERS.value):
      out = fn(*args)
    jax.block_until_ready(out)
    dt = (time.perf_counter() - start) / _ITERS.value
    print(f"  {name:>12}: {dt * 1e3:8.1f} ms/step, {b * t / dt:10.0f} tokens/s")


if __name__ == "__main__":
  app.run(main)
