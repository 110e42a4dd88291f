"""The train step: accumulation, masks, sharding, optimizers, non-finite skips, resume."""

import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from flax import nnx

from autocode_jax.models import init_model, make_mesh, preset
from autocode_jax import flagging
from autocode_jax.training.checkpoint import Checkpointer
from autocode_jax.training.optimizers import (OptimizerConfig, build_optimizer, decay_mask,
                                              make_schedule)
from autocode_jax.training.step import (LossConfig, denominators, init_train_state,
                                        loss_and_grads, loss_from_logprobs, make_train_step)
from train_fixtures import TOOL_POSITIONS, make_batch

TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def model_parts():
  return nnx.split(init_model(preset("tiny-qwen2"), seed=0))


def _max_diff(a, b):
  return max(float(jnp.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("cfg", [LossConfig(), LossConfig(loss_aggregation="seq_mean", kl_coef=0.1),
                                 LossConfig(ratio_level="sequence", entropy_coef=0.01),
                                 LossConfig(kind="sft")],
                         ids=["token_decision", "seq_kl_decision", "sequence_ent_decision", "sft"])
def test_accumulated_gradients_equal_full_batch(model_parts, cfg):
  graphdef, params = model_parts
  batch = make_batch()
  batch["ref_logprobs"] = batch["old_logprobs"] + 0.3
  f = jax.jit(lambda p, b, mb: loss_and_grads(p, graphdef, b, cfg, mb), static_argnums=2)
  loss_full, m_full, g_full = f(params, batch, None)
  loss_acc, m_acc, g_acc = f(params, batch, 2)
  np.testing.assert_allclose(loss_acc, loss_full, rtol=1e-5)
  for k in m_full:
    np.testing.assert_allclose(m_acc[k], m_full[k], rtol=1e-5, atol=1e-6, err_msg=k)
  scale = max(1.0, max(float(jnp.abs(g).max()) for g in jax.tree.leaves(g_full)))
  assert _max_diff(g_acc, g_full) < 1e-5 * scale, scale


def test_gradient_at_tool_tokens_is_exactly_zero():
  batch = {k: jnp.asarray(v) for k, v in make_batch().items()}
  batch["ref_logprobs"] = batch["old_logprobs"] + 0.3
  cfg = LossConfig(kl_coef=0.1, entropy_coef=0.01)
  denoms = denominators(batch, cfg)
  lp = batch["old_logprobs"] + 0.05
  ent = jnp.ones_like(lp)
  dec = jnp.full(batch["decision_tokens"].shape, -0.5)  # the decision rows' own log-probs
  g_lp, g_ent = jax.grad(lambda a, e: loss_from_logprobs(a, e, batch, cfg, denoms, dec)[0],
                         argnums=(0, 1))(lp, ent)
  for pos in TOOL_POSITIONS:
    assert np.all(np.asarray(g_lp)[:, pos] == 0.0) and np.all(np.asarray(g_ent)[:, pos] == 0.0)
  assert np.count_nonzero(np.asarray(g_lp)[:, 4]) > 0


def test_mesh_step_equals_single_device_step(model_parts):
  if jax.device_count() < 8:
    pytest.fail("needs 8 simulated devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
  graphdef, params = model_parts
  mesh = make_mesh(2, 2, 2, devices=jax.devices()[:8])
  sgd = OptimizerConfig(optimizer="sgd", learning_rate=0.1, momentum=0.0)
  opt, sched = build_optimizer(sgd, params)
  batch = make_batch()
  cfg = LossConfig()
  s1, _ = init_train_state(jax.tree.map(jnp.copy, params), opt)
  s1, m1 = make_train_step(graphdef, opt, sched, cfg, micro_batch=4)(s1, batch)
  s2, sh = init_train_state(jax.tree.map(jnp.copy, params), opt, mesh)
  assert s2.params["wq"].get_value().sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
  step = make_train_step(graphdef, opt, sched, cfg, micro_batch=4, mesh=mesh, state_shardings=sh,
                         batch_size=8)
  s2, m2 = step(s2, batch)
  assert _max_diff(s1.params, s2.params) < 1e-6
  for k in m1:
    np.testing.assert_allclose(m2[k], m1[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_non_finite_loss_skips_the_update(model_parts):
  graphdef, params = model_parts
  opt, sched = build_optimizer(OptimizerConfig(learning_rate=1e-2), params)
  state, _ = init_train_state(jax.tree.map(jnp.copy, params), opt)
  before = jax.tree.map(np.asarray, state)
  batch = make_batch()
  batch["advantages"][3] = np.nan
  step = make_train_step(graphdef, opt, sched, LossConfig())
  state, m = step(state, batch)
  assert int(m["skipped"]) == 1 and not np.isfinite(float(m["loss"]))
  assert int(state.step) == 1 and int(state.updates) == 0
  assert _max_diff(state.params, before.params) == 0.0
  assert _max_diff(state.opt_state, before.opt_state) == 0.0
  batch["advantages"][3] = 0.5
  state, m = step(state, batch)
  assert int(m["skipped"]) == 0 and int(state.updates) == 1


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd", "lion", "adafactor"])
def test_optimizers_swap_by_flags(model_parts, name):
  fv = flags.FlagValues()
  flagging.define_flags(OptimizerConfig, fv)
  fv(["prog", f"--optimizer={name}", "--learning_rate=3e-3", "--lr_schedule=cosine",
      "--warmup_steps=1", "--total_steps=10", f"--weight_decay={0 if name == 'adam' else 0.01}"])
  cfg = flagging.from_flags(OptimizerConfig, fv)
  assert cfg.optimizer == name and cfg.lr_schedule == "cosine"
  graphdef, params = model_parts
  opt, sched = build_optimizer(cfg, params)
  state, _ = init_train_state(jax.tree.map(jnp.copy, params), opt)
  step = make_train_step(graphdef, opt, sched, LossConfig(kind="sft"))
  batch = make_batch()
  losses = []
  for _ in range(4):
    state, m = step(state, batch)
    losses.append(float(m["loss"]))
  assert losses[-1] < losses[0], losses
  np.testing.assert_allclose(float(m["learning_rate"]), float(sched(3)), rtol=1e-6)


def test_bad_optimizer_flag_values_fail():
  fv = flags.FlagValues()
  flagging.define_flags(OptimizerConfig, fv)
  with pytest.raises(flags.IllegalFlagValueError):
    fv(["prog", "--optimizer=rmsprop"])
  fv(["prog", "--optimizer=adam", "--weight_decay=0.1"])
  with pytest.raises(flagging.ConfigError, match="^weight_decay: .*adamw"):
    flagging.from_flags(OptimizerConfig, fv)
  fv2 = flags.FlagValues()
  flagging.define_flags(LossConfig, fv2)
  fv2(["prog", "--dual_clip=0.5"])
  with pytest.raises(flagging.ConfigError, match="^dual_clip: must be > 1"):
    flagging.from_flags(LossConfig, fv2)


def test_schedules_and_decay_mask(model_parts):
  sched = make_schedule(OptimizerConfig(learning_rate=1.0, lr_schedule="linear", warmup_steps=2,
                                        total_steps=6, end_lr_ratio=0.0))
  np.testing.assert_allclose([float(sched(s)) for s in range(7)], [0, 0.5, 1, 0.75, 0.5, 0.25, 0],
                             atol=1e-6)
  cos = make_schedule(OptimizerConfig(learning_rate=1.0, lr_schedule="cosine", total_steps=4))
  np.testing.assert_allclose([float(cos(s)) for s in (0, 2, 4)], [1.0, 0.5, 0.0], atol=1e-6)
  mask = decay_mask(model_parts[1])
  on = {k for k, v in nnx.to_flat_state(mask) if v.get_value()}
  assert on == {("embed",), ("wq",), ("wk",), ("wv",), ("wo",), ("w_gate",), ("w_up",), ("w_down",)}


def test_checkpoint_restores_onto_another_mesh(model_parts, tmp_path):
  graphdef, params = model_parts
  opt, sched = build_optimizer(OptimizerConfig(learning_rate=1e-3), params)
  mesh_a = make_mesh(1, 8, 1, devices=jax.devices()[:8])
  state, _ = init_train_state(jax.tree.map(jnp.copy, params), opt, mesh_a)
  ck = Checkpointer(str(tmp_path), save_every=1, keep=1)
  ck.save(3, state, force=True)
  ck.wait()
  mesh_b = make_mesh(2, 1, 4, devices=jax.devices()[:8])
  target, _ = init_train_state(jax.tree.map(jnp.zeros_like, params), opt, mesh_b)
  restored = ck.restore(3, target)
  assert restored.params["w_gate"].get_value().sharding.spec == jax.sharding.PartitionSpec(None, None, "tensor")
  assert _max_diff(restored, state) == 0.0
  ck.close()


def _run(ckpt, out, tokenizer_dir, kill_after=None):
  cmd = [sys.executable, os.path.join(TESTS, "train_fixtures.py"), str(ckpt), str(out),
         str(tokenizer_dir)]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             PYTHONPATH=os.path.dirname(TESTS))  # this checkout's package, whatever is installed
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
  seen = []
  for line in proc.stdout:
    seen.append(line.split()[1])
    if kill_after is not None and line.startswith(f"step {kill_after} "):
      proc.send_signal(signal.SIGKILL)
      break
  proc.wait(timeout=300)
  return proc.returncode, seen


@pytest.mark.slow
def test_mstep_resumed_after_sigkill_gives_equal_parameters(tmp_path, shared_dir):
  """em.mstep.run_mstep, killed mid-M-step and rerun, replays the batches it missed (3 epochs of
  3 steps, the epochs' orders seeded) and ends with the uninterrupted run's parameters."""
  tok = shared_dir / "data" / "tokenizers" / "qwen2.5" / "derived"
  rc, steps = _run(tmp_path / "a", tmp_path / "a.npz", tok)
  assert rc == 0 and steps == [str(i) for i in range(9)]
  rc, steps = _run(tmp_path / "b", tmp_path / "b.npz", tok, kill_after=6)
  assert rc == -signal.SIGKILL and not (tmp_path / "b.npz").exists()
  rc, resumed = _run(tmp_path / "b", tmp_path / "b.npz", tok)
  # It resumed from a committed checkpoint (every 2 steps; the one in flight at the kill may be
  # lost), not from scratch.
  assert rc == 0 and int(resumed[0]) in (2, 4, 6) and resumed[-1] == "8", resumed
  a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
  assert len(a.files) == len(b.files) > 0
  for k in a.files:
    np.testing.assert_array_equal(a[k], b[k])


def test_missing_batch_field_is_named(model_parts):
  graphdef, params = model_parts
  batch = make_batch()
  del batch["policy_mask"]
  with pytest.raises(ValueError, match=r"lacks field\(s\) \['policy_mask'\]"):
    loss_and_grads(params, graphdef, batch, LossConfig())
  batch = make_batch()
  del batch["decision_s1"]
  with pytest.raises(ValueError, match=r"lacks field\(s\) \['decision_s1'\]"):
    loss_and_grads(params, graphdef, batch, LossConfig(ce_coef=1.0))
  loss_and_grads(params, graphdef, batch, LossConfig(ce_coef=0.0))  # not needed without it
  with pytest.raises(ValueError, match="ref_logprobs"):
    loss_and_grads(params, graphdef, make_batch(), LossConfig(kl_coef=0.1))
