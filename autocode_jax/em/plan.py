"""The memory plan of a run, per device, with nothing allocated (`train.py --dry_run`), and the
process memory settings the entry point applies before JAX starts.

From the configuration alone: the architecture (init_from's config.json; no weights are read),
the mesh (the real devices, or simulated CPU devices where they are absent), the abstract
parameters and optimizer state with their shardings (exact sizes), the train step and the
behaviour log-prob pass compiled ahead of time for the configured micro-batch and the longest
sequence the run can make (XLA's memory analysis of the compiled programs), and vLLM's share
from its settings (estimated). Compiled for CPU devices, the programs' figures are XLA:CPU's: a
GPU compile fuses and schedules differently, so they estimate the GPU's; compiled on the GPUs
themselves they are that compiler's own.

Memory on a GPU box (engine=vllm): vLLM checks at start-up that the share it is told
(vllm_gpu_memory_utilization) is free, and JAX would otherwise preallocate 75% of each GPU
first. So the entry point turns JAX's preallocation off and caps JAX's allocator at
jax_memory_fraction (auto: 1 - vllm_gpu_memory_utilization - RESERVE), before JAX starts.
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

GiB = 2 ** 30
# Of each device's memory, what is neither JAX's nor vLLM's: CUDA contexts (JAX's, torch's and
# vLLM's), NCCL buffers, what vLLM keeps while it sleeps.
RESERVE = 0.05
JAX_DEFAULT_FRACTION = 0.75  # XLA_PYTHON_CLIENT_MEM_FRACTION's default
# vLLM's memory beside weights and KV cache: its profiled activation peak and CUDA graphs.
VLLM_OVERHEAD = 2 * GiB


class PlanError(ValueError):
  """The dry run cannot plan this configuration (e.g. too few devices for the mesh)."""


def jax_fraction(cfg) -> float:
  """The share of each device's memory JAX may allocate."""
  if cfg.jax_memory_fraction:
    return cfg.jax_memory_fraction
  if cfg.rollout.engine == "vllm":
    return round(1.0 - cfg.rollout.vllm_gpu_memory_utilization - RESERVE, 4)
  return JAX_DEFAULT_FRACTION


def memory_env(cfg) -> dict[str, str]:
  """The environment JAX's GPU allocator reads at start-up: with vLLM beside it, no
  preallocation and a cap of jax_fraction; without, JAX's defaults unless jax_memory_fraction
  is set. Variables already in the environment are the user's and are kept."""
  env = {}
  if cfg.rollout.engine == "vllm":
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
  if cfg.rollout.engine == "vllm" or cfg.jax_memory_fraction:
    env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{jax_fraction(cfg):.4g}"
  return env


def apply_memory_env(cfg, environ=os.environ) -> dict[str, str]:
  """Sets memory_env(cfg) where the user has not; returns what is in effect. Call it before
  JAX's backends start (the first device query)."""
  return {k: environ.setdefault(k, v) for k, v in memory_env(cfg).items()}


def check_engine_devices(cfg, platform: str, local_devices: int, distributed: bool) -> None:
  """vLLM on every GPU: one engine per process over all of the process's GPUs (tensor
  parallel); with several GPUs per machine, one process per GPU under --distributed (JAX's
  multi-host runtime), each engine on its own. Raises ConfigError where the engine would leave
  GPUs idle."""
  from autocode_jax.em.config import ConfigError
  tp = cfg.rollout.vllm_tensor_parallel
  if cfg.rollout.engine != "vllm" or platform != "gpu" or local_devices == tp:
    return
  how = ("set CUDA_VISIBLE_DEVICES so that each process sees only its own GPU(s)" if distributed
         else "launch one process per GPU with --distributed (README, 'On 8 GPUs')")
  raise ConfigError("vllm_tensor_parallel",
                    f"this process sees {local_devices} GPUs but its vLLM engine would use "
                    f"{tp}: {how}, or set --vllm_tensor_parallel="
                    f"{local_devices} if the model's heads divide by it")


# -- sizes -----------------------------------------------------------------------------------------

def per_device_bytes(tree) -> int:
  """Bytes one device holds of a pytree of ShapeDtypeStructs with shardings (the largest shard
  where shards differ)."""
  total = 0
  for x in jax.tree.leaves(tree):
    shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
    total += math.prod(shape) * jnp.dtype(x.dtype).itemsize
  return total


def _with_shardings(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                      shardings)


def sequence_lengths(cfg, tokenizer, length: int = 0) -> dict:
  """The longest train row of the run (tokens before padding) and its prompt: the longest
  prompt of the run's queries plus max_tokens (capped at vllm_max_model_len under vLLM), or
  for sft its longest prompt + solution; `length` overrides the train row."""
  from autocode_jax.data.prompts import CODE_PREFIX, build_prompt
  from autocode_jax.em import loop
  from autocode_jax.em.policy import model_config
  from autocode_jax.rollout.session import stop_ids
  queries = loop.load_queries(cfg, cfg.train_set, cfg.num_queries, "num_queries", "train")
  if cfg.algorithm == "sft":
    stops = stop_ids(tokenizer, model_config(cfg, tokenizer), cfg.template)
    recs = loop.sft_dtrain(cfg, tokenizer, queries, 0, stops)
    longest = max(r.length for r in recs)
    prompt, source = max(len(r.prompt_ids) for r in recs), "longest prompt + solution"
  else:
    prompt = max(len(tokenizer.encode(build_prompt(q.problem, "auto", "vanilla", cfg.template,
                                                   tokenizer).text)) for q in queries)
    longest, source = prompt + cfg.max_tokens, f"longest prompt {prompt} + max_tokens"
    if cfg.rollout.engine == "vllm" and longest > cfg.rollout.vllm_max_model_len:
      longest, source = cfg.rollout.vllm_max_model_len, "vllm_max_model_len"
  if length:
    longest, source = length, "--dry_run_length"
  return {"train": longest, "prompt": prompt, "prefix": len(tokenizer.encode(CODE_PREFIX)),
          "source": source}


def abstract_batch(cfg, rows: int, lengths: dict, mesh) -> dict:
  """ShapeDtypeStructs of the train step's batch, rows sharded like Policy.to_global shards
  them: the batch mstep.make_batch builds from `rows` records of the longest row (collate's
  padding, keys and dtypes), one query each (so as many decision rows)."""
  from autocode_jax.data.dtrain import TrainRecord
  from autocode_jax.em import mstep
  from autocode_jax.training.step import batch_sharding
  prompt = min(lengths["prompt"], lengths["train"] - 1)
  n = lengths["train"] - prompt
  records = [TrainRecord(query_id=str(i), probe="vanilla", iteration=0, label=0, reward=0.0,
                         prompt_ids=[0] * prompt, token_ids=[0] * n, roles="m" * n,
                         logprobs=[0.0] * n, advantage=0.0, group=str(i), s_star=(0.5, 0.5),
                         decision_ids=[0] * lengths["prefix"]) for i in range(rows)]
  batch = mstep.make_batch(records, [np.zeros(n, np.float32)] * rows, range(rows), 0,
                           cfg.length_multiple, cfg.loss.decision_term,
                           reference=bool(cfg.loss.kl_coef))
  sh = batch_sharding(mesh, rows)
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sh) for k, v in batch.items()}


def _rows_per_device(mesh, rows: int) -> int:
  from autocode_jax.training.step import batch_sharding
  return batch_sharding(mesh, rows).shard_shape((rows,))[0]


def _program_peak(compiled) -> dict:
  """XLA's memory analysis of a compiled program, per device."""
  m = compiled.memory_analysis()
  if m is None:
    raise PlanError("this backend's compiler reports no memory analysis")
  args, out, alias, temp = (int(m.argument_size_in_bytes), int(m.output_size_in_bytes),
                            int(m.alias_size_in_bytes), int(m.temp_size_in_bytes))
  return {"arguments": args, "outputs": out, "aliased": alias, "temporaries": temp,
          "peak": args + out - alias + temp}


# -- the plan --------------------------------------------------------------------------------------

@dataclasses.dataclass
class Plan:
  """Per-device figures (bytes) and what they are checked against."""
  devices: int
  platform: str
  simulated: bool
  mesh: dict
  lines: list  # (label, bytes or None, how)
  jax_share: int
  shortfalls: list  # one sentence each, naming the flag to change

  @property
  def fits(self) -> bool:
    return not self.shortfalls

  def text(self) -> str:
    where = (f"{self.devices} simulated CPU devices (figures of XLA:CPU compiles: an estimate "
             f"of a GPU's)" if self.simulated else f"{self.devices} {self.platform} devices")
    out = [f"memory plan per device: mesh {self.mesh}, compiled for {where}"]
    for label, n, how in self.lines:
      out.append(f"  {label:<62} {'' if n is None else f'{n / GiB:9.2f} GiB'}  {how}")
    out.append("fits: yes" if self.fits else "fits: NO")
    out += [f"  short: {s}" for s in self.shortfalls]
    return "\n".join(out)


def memory_plan(cfg, tokenizer, device_gib: float, devices=None, length: int = 0,
                simulated: bool = False) -> Plan:
  """The plan of `cfg` on `devices` (default: all), each with device_gib GiB."""
  from autocode_jax.em.policy import behaviour_logprob_program
  from autocode_jax.models.sharding import make_mesh
  from autocode_jax.models.transformer import abstract_model, count_params
  from autocode_jax.training.optimizers import build_optimizer
  from autocode_jax.training.step import TrainState, make_train_step, train_state_shardings
  from autocode_jax.em.policy import model_config
  devices = list(jax.devices() if devices is None else devices)
  try:
    mesh = make_mesh(cfg.mesh_data, cfg.mesh_fsdp, cfg.mesh_tensor, devices=devices)
  except ValueError as e:
    raise PlanError(str(e)) from None
  device = int(device_gib * GiB)
  mc = model_config(cfg, tokenizer)
  graphdef, params = nnx.split(abstract_model(mc))
  optimizer, schedule = build_optimizer(cfg.optimizer, params)
  shardings = train_state_shardings(params, optimizer, mesh)
  scalar = jax.ShapeDtypeStruct((), jnp.int32)
  state = _with_shardings(TrainState(scalar, scalar, params, jax.eval_shape(optimizer.init,
                                                                            params)), shardings)
  n_params = count_params(mc)
  lengths = sequence_lengths(cfg, tokenizer, length)
  b = cfg.train_batch_size
  micro = cfg.micro_batch_size or b
  param_b, opt_b = per_device_bytes(state.params), per_device_bytes(state.opt_state)
  lines = [(f"parameters: {n_params / 1e9:.2f} B in {mc.param_dtype}", param_b, "exact"),
           (f"optimizer state: {cfg.optimizer.optimizer}", opt_b, "exact"),
           (f"gradients: {mc.param_dtype}, in the step's temporaries", param_b, "exact")]

  step = make_train_step(graphdef, optimizer, schedule, cfg.loss,
                         micro_batch=cfg.micro_batch_size or None, mesh=mesh,
                         state_shardings=shardings, batch_size=b)
  batch = abstract_batch(cfg, b, lengths, mesh)
  t = batch["tokens"].shape[1]
  train = _program_peak(step.lower(state, batch).compile())
  per_dev = f"{_rows_per_device(mesh, micro)}/device"
  lines.append((f"train rows: {t} tokens ({lengths['source']})", None, ""))
  lines.append((f"train step temporaries: micro-batch {micro} ({per_dev}) x {t} tokens",
                train["temporaries"], "compiled"))
  lines.append(("train step peak: state + batch + temporaries", train["peak"], "compiled"))
  peaks = {"train step": train["peak"]}
  if cfg.algorithm != "sft":
    rows = cfg.logprob_batch_size
    rows_batch = abstract_batch(cfg, rows, lengths, mesh)
    tok, mask = rows_batch["tokens"], rows_batch["attention_mask"]
    with jax.set_mesh(mesh):
      beh = _program_peak(behaviour_logprob_program.lower(graphdef, state.params, tok, mask)
                          .compile())
    lines.append((f"behaviour log-prob pass temporaries: {rows} rows x {t} tokens",
                  beh["temporaries"], "compiled"))
    peaks["behaviour pass"] = opt_b + beh["peak"]  # the optimizer state stays resident
    lines.append(("behaviour pass peak: state + rows + temporaries", peaks["behaviour pass"],
                  "compiled"))
  kv_token = 2 * mc.num_layers * mc.num_kv_heads * mc.head_dim * jnp.dtype(mc.dtype).itemsize
  if cfg.rollout.engine == "jax" and cfg.algorithm != "sft":
    rows = min(cfg.rollout_chunk * cfg.k * len(cfg.probes), cfg.rollout.jax_slots)
    kv = _rows_per_device(mesh, rows) * (t + cfg.max_tokens) * kv_token
    peaks["rollouts"] = param_b + opt_b + kv
    lines.append((f"built-in sampler KV cache: {rows} slots x {t + cfg.max_tokens} positions",
                  kv, "estimated (KV cache only)"))
  which = max(peaks, key=peaks.get)
  jax_peak = peaks[which]
  jax_share = int(jax_fraction(cfg) * device)
  lines.append((f"JAX peak ({which})", jax_peak, ""))
  lines.append((f"JAX's share: jax_memory_fraction {jax_fraction(cfg):.2f}", jax_share,
                "XLA_PYTHON_CLIENT_MEM_FRACTION"))
  shortfalls = []
  if jax_peak > jax_share:
    fix = {"train step": f"lower --micro_batch_size (now {micro})",
           "behaviour pass": f"lower --logprob_batch_size (now {cfg.logprob_batch_size})",
           "rollouts": f"lower --jax_slots (now {cfg.rollout.jax_slots}) or --rollout_chunk "
                       f"(now {cfg.rollout_chunk})"}[which]
    shortfalls.append(f"the {which} needs {jax_peak / GiB:.2f} GiB per device, JAX's share is "
                      f"{jax_share / GiB:.2f} GiB: short by {(jax_peak - jax_share) / GiB:.2f} "
                      f"GiB at {t} tokens; {fix}, or give JAX more (--jax_memory_fraction)")
  vllm_share = 0
  if cfg.rollout.engine == "vllm":
    tp, model_len = cfg.rollout.vllm_tensor_parallel, cfg.rollout.vllm_max_model_len
    vllm_share = int(cfg.rollout.vllm_gpu_memory_utilization * device)
    weights = n_params * jnp.dtype(mc.dtype).itemsize // tp
    kv_heads = mc.num_kv_heads // tp if mc.num_kv_heads % tp == 0 else 1
    per_token = kv_token * kv_heads // mc.num_kv_heads
    room = vllm_share - weights - VLLM_OVERHEAD
    seqs = room / (per_token * model_len)
    lines.append((f"vLLM's share: vllm_gpu_memory_utilization "
                  f"{cfg.rollout.vllm_gpu_memory_utilization:.2f}", vllm_share, "vLLM claims it"))
    lines.append((f"  weights: {mc.dtype} export, tensor parallel {tp}", weights, "exact"))
    lines.append(("  activations and CUDA graphs", VLLM_OVERHEAD, "estimated"))
    lines.append((f"  KV cache: {max(room, 0) // per_token:,} tokens = {max(seqs, 0):.0f} "
                  f"sequences of {model_len}", max(room, 0), "estimated"))
    if seqs < 1:
      shortfalls.append(f"vLLM's share ({vllm_share / GiB:.2f} GiB) does not hold its weights, "
                        f"activations and one sequence of {model_len} tokens: raise "
                        f"--vllm_gpu_memory_utilization or --vllm_tensor_parallel")
  reserve = device - jax_share - vllm_share
  lines.append(("rest: CUDA contexts, NCCL, allocator slack", reserve, ""))
  if reserve < 0:
    shortfalls.append(f"JAX's and vLLM's shares add up to more than the device's "
                      f"{device_gib:g} GiB: lower --jax_memory_fraction or "
                      f"--vllm_gpu_memory_utilization")
  lines.insert(0, ("device memory: --device_memory_gib", device, ""))
  return Plan(len(devices), devices[0].platform, simulated, dict(mesh.shape), lines, jax_share,
              shortfalls)
