"""The memory plan (em.plan, `train.py --dry_run`) and the process memory settings: the three
7B flagfiles planned on 8 simulated devices against 80 GiB (compiled ahead of time on the CPU:
XLA:CPU's figures estimate a GPU's), a micro-batch that does not fit, the exact state sizes,
and the environment JAX's allocator is given beside vLLM."""

import dataclasses
import pathlib
import re
import subprocess
import sys

import jax
import pytest

from autocode_jax.em import plan
from autocode_jax.em.config import ConfigError, RunConfig
from autocode_jax.models import load_tokenizer
from autocode_jax.models.config import load_hf_config
from autocode_jax.models.transformer import count_params
from autocode_jax.rollout.session import RolloutSettings

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def qwen7b_dir(tmp_path_factory, shared_dir):
  """A HuggingFace directory holding only Qwen2.5-7B's config.json: all a dry run reads."""
  d = tmp_path_factory.mktemp("qwen2.5-7b")
  (d / "config.json").write_text((shared_dir / "data" / "model_configs" / "qwen2.5-7b.json")
                                 .read_text())
  return d


def _dry_run(flagfile, model_dir, shared_dir, *extra):
  cmd = [sys.executable, str(REPO / "experiments" / "train.py"),
         f"--flagfile=experiments/configs/{flagfile}", f"--init_from={model_dir}",
         f"--tokenizer_dir={shared_dir / 'data' / 'tokenizers' / 'qwen2.5' / 'derived'}",
         "--dry_run", "--device_memory_gib=80", *extra]
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)


def _gib(out, label):
  m = re.search(re.escape(label) + r".*?\s([0-9.]+) GiB", out)
  assert m, (label, out)
  return float(m.group(1))


@pytest.mark.slow
@pytest.mark.parametrize("flagfile", ["qwen25_7b_em.flags", "qwen25_7b_rl.flags",
                                      "qwen25_7b_sft.flags"])
def test_7b_flagfiles_fit_80_gib_on_8_devices(flagfile, qwen7b_dir, shared_dir, tmp_path):
  p = _dry_run(flagfile, qwen7b_dir, shared_dir, f"--run_dir={tmp_path / 'run'}")
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  out = p.stdout
  assert "mesh {'data': 1, 'fsdp': 8, 'tensor': 1}" in out and "8 simulated CPU devices" in out
  assert "fits: yes" in out
  n = count_params(load_hf_config(str(qwen7b_dir)))
  assert _gib(out, "parameters:") == pytest.approx(n * 4 / 8 / 2 ** 30, abs=0.01)  # fp32 / 8
  assert _gib(out, "optimizer state: adamw") == pytest.approx(2 * n * 4 / 8 / 2 ** 30, abs=0.02)
  peak, share = _gib(out, "JAX peak"), _gib(out, "JAX's share")
  assert 0 < peak <= share == pytest.approx(0.45 * 80)  # 1 - vLLM's 0.5 - 5%
  assert _gib(out, "vLLM's share") == pytest.approx(40.0)
  assert _gib(out, "weights: bfloat16 export") == pytest.approx(n * 2 / 2 ** 30, abs=0.01)
  assert ("behaviour log-prob pass" in out) == (flagfile != "qwen25_7b_sft.flags")
  assert "XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.45" in out
  assert not (tmp_path / "run").exists()  # a dry run writes nothing


@pytest.mark.slow
def test_a_micro_batch_that_does_not_fit_exits_non_zero(qwen7b_dir, shared_dir):
  """32 rows per micro-batch (4 per device) at 4096 tokens: the step's attention scores alone
  are 7.0 GiB a tensor per device."""
  p = _dry_run("qwen25_7b_em.flags", qwen7b_dir, shared_dir, "--micro_batch_size=32")
  assert p.returncode == 1, p.stdout[-3000:] + p.stderr[-3000:]
  assert "fits: NO" in p.stdout
  m = re.search(r"the train step needs ([0-9.]+) GiB per device, JAX's share is 36.00 GiB: "
                r"short by ([0-9.]+) GiB at 4096 tokens; lower --micro_batch_size \(now 32\)",
                p.stderr)
  assert m, p.stderr[-3000:]
  assert float(m.group(1)) - 36.0 == pytest.approx(float(m.group(2)), abs=0.011)


def test_plan_figures_are_per_device(shared_dir):
  """The state sizes are per device (sharded bytes), and the compiled step's arguments are that
  state plus this device's rows of the batch: XLA's analysis of the partitioned program."""
  tok = load_tokenizer(str(shared_dir / "data" / "tokenizers" / "qwen2.5" / "derived"))
  cfg = RunConfig(run_dir="unused", model_preset="tiny-qwen2", tokenizer_dir="t",
                  data_dir=str(shared_dir / "data"), num_queries=8, max_tokens=64,
                  train_batch_size=8, micro_batch_size=4, logprob_batch_size=8,
                  length_multiple=64, mesh_data=1, mesh_fsdp=8, mesh_tensor=1)
  p = plan.memory_plan(cfg, tok, 4.0, jax.devices()[:8], simulated=True)
  lines = {label.split(":")[0]: n for label, n, _ in p.lines}
  from autocode_jax.em.policy import model_config
  mc = model_config(cfg, tok)
  n = count_params(mc)
  # FSDP shards the `embed` axis of a parameter (8 divides 128); norms and biases have none and
  # are whole on every device.
  from flax import nnx
  from autocode_jax.models.transformer import abstract_model
  params = nnx.state(abstract_model(mc), nnx.Param)
  want = sum(v.get_value().size * 4 // (8 if "embed" in v.get_metadata()["axes"] else 1)
             for v in jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nnx.Variable)))
  assert n * 4 // 8 < want < n * 4 // 7
  assert lines["parameters"] == want
  # Adam's two moments, sharded like their parameters, and its step counters.
  assert 2 * want < lines["optimizer state"] <= 2 * want + 16
  assert p.fits and p.jax_share == int(0.75 * 4 * 2 ** 30)  # jax engine: JAX's default share
  wide = plan.memory_plan(dataclasses.replace(cfg, mesh_fsdp=2, mesh_data=4), tok, 1.0,
                          jax.devices()[:8], simulated=True)
  assert {l.split(":")[0]: x for l, x, _ in wide.lines}["parameters"] > want
  with pytest.raises(plan.PlanError, match="needs 8 devices, have 4"):
    plan.memory_plan(cfg, tok, 1.0, jax.devices()[:4])


def _cfg(jax_memory_fraction=0.0, **rollout):
  """A RunConfig with these rollout settings."""
  return RunConfig(run_dir="r", model_preset="tiny-qwen2", tokenizer_dir="t",
                   jax_memory_fraction=jax_memory_fraction, rollout=RolloutSettings(**rollout))


def test_memory_env_beside_vllm():
  cfg = _cfg(engine="vllm", vllm_gpu_memory_utilization=0.5)
  assert plan.memory_env(cfg) == {"XLA_PYTHON_CLIENT_PREALLOCATE": "false",
                                  "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.45"}
  env = {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.3"}  # the user's own setting is kept
  assert plan.apply_memory_env(cfg, env) == {"XLA_PYTHON_CLIENT_PREALLOCATE": "false",
                                             "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.3"}
  assert plan.memory_env(_cfg()) == {}  # the built-in sampler: JAX's defaults
  assert plan.memory_env(_cfg(jax_memory_fraction=0.6)) == {
      "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.6"}
  with pytest.raises(ConfigError, match="jax_memory_fraction"):
    _cfg(engine="vllm", vllm_gpu_memory_utilization=0.5, jax_memory_fraction=0.5)
  with pytest.raises(ConfigError, match="vllm_gpu_memory_utilization"):
    _cfg(engine="vllm", vllm_gpu_memory_utilization=0.95)


def test_vllm_on_every_gpu():
  cfg = _cfg(engine="vllm", vllm_tensor_parallel=1)
  with pytest.raises(ConfigError, match="vllm_tensor_parallel.*8 GPUs.*--distributed"):
    plan.check_engine_devices(cfg, "gpu", 8, distributed=False)
  with pytest.raises(ConfigError, match="CUDA_VISIBLE_DEVICES"):
    plan.check_engine_devices(cfg, "gpu", 8, distributed=True)
  plan.check_engine_devices(cfg, "gpu", 1, distributed=True)  # one process per GPU
  plan.check_engine_devices(_cfg(engine="vllm", vllm_tensor_parallel=4), "gpu", 4, False)
  plan.check_engine_devices(cfg, "cpu", 8, distributed=False)  # vLLM's CPU build
  plan.check_engine_devices(_cfg(), "gpu", 8, distributed=False)  # the built-in sampler


@pytest.mark.slow
def test_a_mesh_the_planned_devices_cannot_hold_is_a_bad_flag(qwen7b_dir, shared_dir):
  p = _dry_run("qwen25_7b_em.flags", qwen7b_dir, shared_dir, "--dry_run_devices=4")
  assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
  assert "bad flag: --dry_run_devices=4: mesh shape (1, 8, 1) needs 8 devices, have 4" in p.stderr
