"""Sharding: the rules table, and (2, 2, 2)-mesh results equal to one device on 8 CPU devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from autocode_jax.models import (LOGICAL_RULES, ShardingRuleError, from_pretrained, init_model,
                                 make_mesh, preset, state_shardings, token_logprobs)
from autocode_jax.models.sharding import logical_to_spec
from hf_fixtures import VOCAB, save_tiny


@pytest.fixture(scope="module")
def mesh():
  if jax.device_count() < 8:
    pytest.fail(f"needs 8 devices, have {jax.device_count()}: set "
                "XLA_FLAGS=--xla_force_host_platform_device_count=8 before jax is imported")
  return make_mesh(2, 2, 2, devices=jax.devices()[:8])


def test_make_mesh_fills_one_axis():
  m = make_mesh(data=1, fsdp=-1, tensor=2, devices=jax.devices()[:8])
  assert dict(m.shape) == {"data": 1, "fsdp": 4, "tensor": 2}
  with pytest.raises(ValueError, match="needs 8 devices"):
    make_mesh(2, 2, 2, devices=jax.devices()[:4])


def test_rules_map_and_fall_back_to_replication():
  shape = {"data": 2, "fsdp": 2, "tensor": 2}
  assert logical_to_spec(("layers", "embed", "q_heads", "head_dim"), (2, 64, 4, 16), shape) == \
      P(None, "fsdp", "tensor", None)
  # One KV head cannot be split over tensor=2: replicated, not an error.
  assert logical_to_spec(("layers", "embed", "kv_heads", "head_dim"), (2, 64, 1, 16), shape) == \
      P(None, "fsdp", None, None)
  assert logical_to_spec(("batch", "seq"), (4, 8), shape) == P(("data", "fsdp"), None)


def test_unknown_logical_axis_is_an_error():
  with pytest.raises(ShardingRuleError, match="'experts'"):
    logical_to_spec(("experts", "embed"), (4, 8), {"fsdp": 2}, what="parameter moe")


def test_parameter_without_rule_or_names_is_an_error(mesh):
  state = nnx.state(init_model(preset("tiny-qwen2")), nnx.Param)
  rules = tuple(r for r in LOGICAL_RULES if r[0] != "mlp")
  with pytest.raises(ShardingRuleError, match="parameter w_down.*'mlp'"):
    state_shardings(state, mesh, rules)

  class Bare(nnx.Module):
    def __init__(self):
      self.w = nnx.Param(jnp.ones((4, 4)))

  with pytest.raises(ShardingRuleError, match="parameter w has no logical axis names"):
    state_shardings(nnx.state(Bare()), mesh)


@pytest.mark.parametrize("kind", ["qwen2-tied-kv1", "qwen2-untied-kv2", "llama"])
def test_mesh_forward_and_logprobs_equal_single_device(kind, mesh, tmp_path):
  save_tiny(kind, tmp_path)
  single = from_pretrained(str(tmp_path))
  sharded = from_pretrained(str(tmp_path), mesh=mesh)
  assert sharded.w_gate[...].sharding.spec == P(None, "fsdp", "tensor")
  assert len(sharded.w_gate[...].addressable_shards) == 8

  tokens = jnp.asarray(np.random.RandomState(0).randint(0, VOCAB, (4, 10)))
  mask = jnp.asarray((np.arange(10)[None] < np.array([[10], [7], [10], [4]])).astype(np.int32))
  inputs, targets = tokens[:, :-1], tokens[:, 1:]

  def run(model):
    graphdef, state = nnx.split(model)

    @jax.jit
    def f(state, tokens, mask, inputs, targets):
      logits = nnx.merge(graphdef, state)(tokens, attention_mask_bt=mask)
      return logits, token_logprobs(graphdef, state, inputs, targets, None, mask[:, :-1])

    return f(state, tokens, mask, inputs, targets)

  ref_logits, ref_lp = run(single)
  with jax.set_mesh(mesh):
    logits, lp = run(sharded)
  np.testing.assert_allclose(logits, ref_logits, atol=1e-5, rtol=0)
  np.testing.assert_allclose(lp, ref_lp, atol=1e-5, rtol=0)


def test_init_model_on_mesh_creates_sharded_params(mesh):
  model = init_model(preset("tiny-llama"), seed=1, mesh=mesh)
  assert model.wq[...].sharding.spec == P(None, "fsdp", "tensor", None)
  assert model.embed[...].sharding.spec == P("tensor", "fsdp")
  ref = init_model(preset("tiny-llama"), seed=1)
  np.testing.assert_array_equal(model.wq[...], ref.wq[...])
