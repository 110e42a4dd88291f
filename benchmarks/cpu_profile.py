"""Where the time goes on the CPU: per-op profiles of our train step and sampler (XLA ops from a
jax.profiler trace) beside torch.profiler's table for the HF peers, on cpu_peers.py's model.

  python benchmarks/cpu_profile.py [--profile_train=256x8] [--profile_gen_batch=32]
      [--profile_top=15] [--noprofile_hf]   (--prompt_len, --new_tokens: as cpu_peers.py)

Ours: each XLA op's time summed over the calls and the threads that ran it, with its output
shape and the JAX operation it came from; the wall time of a call beside the summed op time
shows how busy the two cores were. HF: torch.profiler's self-CPU table of one step / generate.
"""

import collections
import glob
import os
import re
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from autocode_jax import hostmem  # noqa: E402

hostmem.keep_freed_memory()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402

import cpu_peers  # noqa: E402

_TRAIN = flags.DEFINE_string("profile_train", "256x8", "SEQxBATCH of the profiled train step")
_GEN = flags.DEFINE_integer("profile_gen_batch", 32, "rows of the profiled generate call")
_TOP = flags.DEFINE_integer("profile_top", 15, "ops listed per profile")
_HF = flags.DEFINE_bool("profile_hf", True, "also profile the HF peers")
_SKIP = ("ThunkExecutor", "$", "PjitFunction", "SlinkyThreadPool")


def xla_profile(title: str, call, hlo_text: str, n: int = 3) -> None:
  """Runs call() n times under jax.profiler and prints the top ops."""
  from jax._src.lib import _profile_data
  jax.block_until_ready(call())
  d = tempfile.mkdtemp()
  jax.profiler.start_trace(d)
  start = time.perf_counter()
  for _ in range(n):
    out = call()
  jax.block_until_ready(out)
  wall = (time.perf_counter() - start) / n
  jax.profiler.stop_trace()
  data = _profile_data.ProfileData.from_file(
      glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)[0])
  total, count = collections.Counter(), collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      for ev in line.events:
        if not ev.name.startswith(_SKIP):
          total[ev.name] += ev.duration_ns
          count[ev.name] += 1
  shutil.rmtree(d)
  print(f"\n== {title}: wall {wall * 1e3:.1f} ms per call, XLA ops summed over threads "
        f"{sum(total.values()) / n / 1e6:.1f} ms")
  print("| ms per call | runs | op | output | from |\n|---|---|---|---|---|")
  for name, ns in total.most_common(_TOP.value):
    line = re.search(r"\n\s*%" + re.escape(name) + r" = ([^\n]*)", hlo_text)
    line = line.group(1) if line else ""
    src = re.search(r'op_name="([^"]+)"', line)
    shape, src = line.split(" ")[0][:36], (src.group(1)[-56:] if src else "")
    print(f"| {ns / n / 1e6:.2f} | {count[name] / n:.0f} | {name[:30]} | {shape} | {src} |")


def torch_profile(title: str, fn) -> None:
  from torch.profiler import ProfilerActivity, profile
  fn()
  with profile(activities=[ProfilerActivity.CPU]) as prof:
    fn()
  print(f"\n== {title}")
  print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=_TOP.value))


def main(_):
  from flax import nnx

  from autocode_jax.models import from_pretrained, init_model, save_pretrained
  from autocode_jax.rollout import JaxSampler, SamplingParams, jax_sampler
  from autocode_jax.training import step as step_lib
  from autocode_jax.training.optimizers import OptimizerConfig, build_optimizer
  t, b = (int(x) for x in _TRAIN.value.split("x"))
  with tempfile.TemporaryDirectory() as d:
    save_pretrained(init_model(cpu_peers.SHAPE, seed=0), d)
    graphdef, params = nnx.split(from_pretrained(d))
    opt, sched = build_optimizer(OptimizerConfig(optimizer="adamw", learning_rate=1e-6), params)
    state, _ = step_lib.init_train_state(params, opt)
    step = jax.jit(lambda s, x: step_lib.train_step(
        s, x, graphdef=graphdef, optimizer=opt, schedule=sched,
        loss_cfg=step_lib.LossConfig(ce_coef=0.0)))
    data = {k: jnp.asarray(v) for k, v in cpu_peers.batch(b, t, cpu_peers.SHAPE.vocab_size).items()}
    xla_profile(f"ours: train step seq {t} x {b}", lambda: step(state, data),
                step.lower(state, data).compile().as_text())

    sampler = JaxSampler(from_pretrained(d))
    ps = cpu_peers.prompts(_GEN.value, cpu_peers._PROMPT.value, cpu_peers.SHAPE.vocab_size)
    sp = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=cpu_peers._NEW.value, seed=0)
    args, kw = sampler.program_call(ps, sp)
    run = jax_sampler._generate
    xla_profile(f"ours: generate batch {_GEN.value}, {cpu_peers._NEW.value} new",
                lambda: run(*args, **kw), run.lower(*args, **kw).compile().as_text(), n=1)

    if _HF.value:
      import torch
      from transformers import AutoModelForCausalLM
      train = cpu_peers.hf_train(d, b, t)
      torch_profile(f"HF: train step seq {t} x {b}", lambda: train(1))
      model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
      gen = cpu_peers.hf_generate(model, ps, cpu_peers._NEW.value)
      torch_profile(f"HF: generate batch {_GEN.value}", lambda: gen(None))


if __name__ == "__main__":
  app.run(main)
