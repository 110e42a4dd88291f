"""Logical axis names -> device mesh: the one rules table, mesh construction, and sharding helpers.

Parameters carry logical axis names as `axes` metadata on their `nnx.Param`; activations are
annotated with `constrain`. `LOGICAL_RULES` maps every logical name onto the mesh axes `data`, `fsdp`,
`tensor`; a name the table does not list is an error, so a new parameter cannot silently end up
replicated.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis, tuple of mesh axes, or None (replicated).
LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # parameters
    ("layers", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
    # activations
    ("batch", ("data", "fsdp")),
    ("seq", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("cache_seq", None),
)


class ShardingRuleError(ValueError):
  """A parameter or activation has a logical axis the rules table does not map."""


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh with Auto axes; one size may be -1 to take the remaining devices."""
  devices = list(jax.devices() if devices is None else devices)
  shape = [data, fsdp, tensor]
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape {tuple(shape)}: at most one axis may be -1")
  if -1 in shape:
    known = math.prod(s for s in shape if s != -1)
    if len(devices) % known:
      raise ValueError(f"mesh shape {tuple(shape)} does not divide {len(devices)} devices")
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) != len(devices):
    raise ValueError(f"mesh shape {tuple(shape)} needs {math.prod(shape)} devices, "
                     f"have {len(devices)}")
  grid = np.asarray(devices, dtype=object).reshape(shape)
  return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int], mesh_shape: dict[str, int],
                    rules=LOGICAL_RULES, what: str = "array") -> PartitionSpec:
  """The PartitionSpec of an array with these logical axes on a mesh of `mesh_shape`.

  A dimension that the mapped mesh axes do not divide, or whose mesh axis an earlier dimension
  already uses, is replicated instead: e.g. one KV head on a tensor axis of 2.
  """
  table = dict(rules)
  if len(axes) != len(shape):
    raise ShardingRuleError(f"{what}: {len(axes)} logical axes {tuple(axes)} for shape {tuple(shape)}")
  used: set[str] = set()
  spec = []
  for name, size in zip(axes, shape):
    if name is None:
      spec.append(None)
      continue
    if name not in table:
      raise ShardingRuleError(f"{what}: logical axis {name!r} is not in the sharding rules "
                              f"(known: {', '.join(table)})")
    target = table[name]
    mesh_axes = () if target is None else (target,) if isinstance(target, str) else tuple(target)
    mesh_axes = tuple(a for a in mesh_axes if mesh_shape.get(a, 1) > 1 and a not in used)
    if not mesh_axes or size % math.prod(mesh_shape[a] for a in mesh_axes):
      spec.append(None)
      continue
    used.update(mesh_axes)
    spec.append(mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
  return PartitionSpec(*spec)


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def state_shardings(state: nnx.State, mesh: Mesh, rules=LOGICAL_RULES) -> nnx.State:
  """NamedShardings for every variable of `state` (same tree structure), from its `axes` metadata."""
  mesh_shape = dict(mesh.shape)

  def one(path, var):
    axes = var.get_metadata().get("axes")
    if axes is None:
      raise ShardingRuleError(f"parameter {_path_str(path)} has no logical axis names")
    spec = logical_to_spec(axes, var.get_value().shape, mesh_shape, rules, what=f"parameter {_path_str(path)}")
    return var.replace(NamedSharding(mesh, spec))

  return jax.tree_util.tree_map_with_path(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def constrain(x: jax.Array, axes: Sequence[str | None], rules=LOGICAL_RULES) -> jax.Array:
  """Annotates an activation with its logical axes; a no-op when no mesh is set (`jax.set_mesh`)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  spec = logical_to_spec(axes, x.shape, dict(mesh.shape), rules, what="activation")
  return jax.lax.with_sharding_constraint(x, spec)


def shard_state(state: nnx.State, mesh: Mesh, rules=LOGICAL_RULES) -> nnx.State:
  """Moves a state onto the mesh by its logical axes."""
  return jax.device_put(state, state_shardings(state, mesh, rules))
