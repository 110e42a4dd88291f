"""The trained policy of a run: the model split once into (graphdef, train state) on the device
mesh, the jitted train step, the jitted behaviour log-prob pass, and host-side helpers that turn
numpy batches into global arrays (the same code on one host or many)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec

from autocode_jax.data.dtrain import TrainRecord
from autocode_jax.models import config as config_lib
from autocode_jax.models.hf import from_pretrained
from autocode_jax.models.sharding import make_mesh
from autocode_jax.models.transformer import init_model, token_logprobs
from autocode_jax.training.collate import collate
from autocode_jax.training.optimizers import build_optimizer
from autocode_jax.training.step import batch_sharding, init_train_state, make_train_step


def local_value(x: jax.Array) -> np.ndarray:
  """The value of a replicated array, read from this host's copy (works across hosts)."""
  return np.asarray(x.addressable_data(0))


def model_config(cfg, tokenizer) -> config_lib.ModelConfig:
  """The architecture of the run's model: init_from's config.json, or the preset with its
  vocabulary grown to the tokenizer's (rounded up to 128) and the tokenizer's EOS."""
  settings = dict(param_dtype=cfg.param_dtype, dtype=cfg.dtype, remat=cfg.remat,
                  logprob_chunk=cfg.logprob_chunk, layer_loop=cfg.layer_loop)
  if cfg.init_from:
    return config_lib.load_hf_config(cfg.init_from, **settings)
  mc = config_lib.preset(cfg.model_preset, **settings)
  vocab = max(mc.vocab_size, -(-tokenizer.vocab_size // 128) * 128)
  return mc.replace(vocab_size=vocab, eos_token_id=tokenizer.eos_token_id)


# Jitted once for all policies (a compiled program per model structure, mesh and batch shape, so
# the phases of a demo, each with its own Policy, share them); the output replicated over the
# mesh set around the call.
@functools.partial(jax.jit, static_argnums=0, out_shardings=PartitionSpec())
def behaviour_logprob_program(graphdef, params, tokens, mask):
  lp = token_logprobs(graphdef, params, tokens[:, :-1], tokens[:, 1:], None, mask[:, :-1])
  return jnp.pad(lp, ((0, 0), (1, 0)))  # aligned with tokens


@dataclasses.dataclass
class Policy:
  cfg: object
  model_config: config_lib.ModelConfig
  mesh: object
  graphdef: object
  state: object          # training.step.TrainState, sharded
  shardings: object
  optimizer: object
  schedule: object
  pad_id: int

  @classmethod
  def build(cls, cfg, tokenizer) -> "Policy":
    mc = model_config(cfg, tokenizer)
    mesh = make_mesh(cfg.mesh_data, cfg.mesh_fsdp, cfg.mesh_tensor)
    if cfg.init_from:
      model = from_pretrained(cfg.init_from, mesh=mesh, param_dtype=cfg.param_dtype,
                              dtype=cfg.dtype, remat=cfg.remat, logprob_chunk=cfg.logprob_chunk,
                              layer_loop=cfg.layer_loop)
    else:
      model = init_model(mc, seed=cfg.seed, mesh=mesh)
    graphdef, params = nnx.split(model)
    optimizer, schedule = build_optimizer(cfg.optimizer, params)
    state, shardings = init_train_state(params, optimizer, mesh)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    policy = cls(cfg, mc, mesh, graphdef, state, shardings, optimizer, schedule, pad)
    policy._step = None
    return policy

  @property
  def step(self) -> int:
    return int(local_value(self.state.step))

  def model(self):
    return nnx.merge(self.graphdef, self.state.params)

  # -- host <-> device ---------------------------------------------------------------------------

  def to_global(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Every host holds the same numpy batch; each array becomes one global array, rows
    sharded over (data, fsdp) where they divide."""
    b = next(iter(batch.values())).shape[0]
    sh = batch_sharding(self.mesh, b)
    return {k: jax.make_array_from_callback(v.shape, sh, lambda idx, v=v: v[idx])
            for k, v in batch.items()}

  def host_params(self):
    """The parameters as numpy arrays, identical on every host (a gather across hosts)."""
    def one(x):
      if x.is_fully_addressable:
        return np.asarray(x)
      from jax.experimental import multihost_utils
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return jax.tree.map(one, self.state.params)

  def local_params(self):
    """Parameters for this host's rollout engine: the sharded ones on a single host, else a
    full copy on the first local device."""
    if jax.process_count() == 1:
      return self.state.params
    return jax.device_put(self.host_params(), jax.local_devices()[0])

  def digest(self) -> str:
    h = hashlib.sha256()
    for x in jax.tree.leaves(self.host_params()):
      h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()

  # -- compute -----------------------------------------------------------------------------------

  def train_step(self):
    """The jitted train step of the run config (its loss, batch and micro-batch sizes)."""
    if self._step is None:
      self._step = make_train_step(
          self.graphdef, self.optimizer, self.schedule, self.cfg.loss,
          micro_batch=self.cfg.micro_batch_size or None, mesh=self.mesh,
          state_shardings=self.shardings, batch_size=self.cfg.train_batch_size)
    return self._step

  def behaviour_logprobs(self, records: Sequence[TrainRecord]) -> list[np.ndarray]:
    """log pi(y_t | x, y<t) of every response token of every record, under the current
    parameters in the trainer's numerics; [R_i] float32 per record."""
    n = self.cfg.logprob_batch_size
    out = []
    for start in range(0, len(records), n):
      chunk = records[start:start + n]
      padded = chunk + [chunk[-1]] * (n - len(chunk))
      batch = collate(padded, self.pad_id, self.cfg.length_multiple)
      g = self.to_global({"tokens": batch["tokens"], "mask": batch["attention_mask"]})
      with jax.set_mesh(self.mesh):
        lp = local_value(behaviour_logprob_program(self.graphdef, self.state.params,
                                                   g["tokens"], g["mask"]))
      for i, r in enumerate(chunk):
        p, m = len(r.prompt_ids), len(r.token_ids)
        out.append(lp[i, p:p + m].astype(np.float32))
    return out
