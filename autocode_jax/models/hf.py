"""HuggingFace checkpoints <-> our model: the weight-mapping table, `from_pretrained` and
`save_pretrained`.

Every parameter of `Transformer` has one row in `_MAPPING`: its HF tensor name (with `{i}` for
stacked per-layer weights) and the layout change between torch's `Linear` ([out, in]) and our
einsum layout ([in, heads, head_dim] etc.). Both directions use the same rows, so a round trip is
exact by construction and a missing row is a loud KeyError, not a silently random weight.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec, SingleDeviceSharding

from autocode_jax.files import write_json
from autocode_jax.models import config as config_lib
from autocode_jax.models import sharding as sharding_lib
from autocode_jax.models.safetensors_io import SafetensorsReader, write_file
from autocode_jax.models.transformer import Transformer, abstract_model


class CheckpointError(ValueError):
  """A HuggingFace checkpoint directory does not match the model its config describes."""


# Layout changes, per (unstacked) tensor. `to_ours(hf_array, our_shape)`, `to_hf(our_array)`.
def _same(x, shape=None):
  return x


def _linear_in(x, shape=None):
  """torch Linear [out, in] -> ours [in, *out_shape] (q/k/v, gate, up, down)."""
  return x.T if shape is None else x.T.reshape(shape)


def _linear_in_back(x):
  return x.reshape(x.shape[0], -1).T


def _linear_out(x, shape=None):
  """o_proj [D, H*E] -> ours [H, E, D]."""
  return x.T.reshape(shape)


def _linear_out_back(x):
  return x.reshape(-1, x.shape[-1]).T


def _bias(x, shape=None):
  return x.reshape(shape)


def _bias_back(x):
  return x.reshape(-1)


_LAYOUTS: dict[str, tuple[Callable, Callable]] = {
    "same": (_same, _same),
    "linear_in": (_linear_in, _linear_in_back),
    "linear_out": (_linear_out, _linear_out_back),
    "bias": (_bias, _bias_back),
}

# our parameter -> (HF tensor name, layout). Names with {i} are stacked over layers.
_MAPPING: dict[str, tuple[str, str]] = {
    "embed": ("model.embed_tokens.weight", "same"),
    "final_norm": ("model.norm.weight", "same"),
    "lm_head": ("lm_head.weight", "linear_in"),
    "attn_norm": ("model.layers.{i}.input_layernorm.weight", "same"),
    "mlp_norm": ("model.layers.{i}.post_attention_layernorm.weight", "same"),
    "wq": ("model.layers.{i}.self_attn.q_proj.weight", "linear_in"),
    "wk": ("model.layers.{i}.self_attn.k_proj.weight", "linear_in"),
    "wv": ("model.layers.{i}.self_attn.v_proj.weight", "linear_in"),
    "bq": ("model.layers.{i}.self_attn.q_proj.bias", "bias"),
    "bk": ("model.layers.{i}.self_attn.k_proj.bias", "bias"),
    "bv": ("model.layers.{i}.self_attn.v_proj.bias", "bias"),
    "wo": ("model.layers.{i}.self_attn.o_proj.weight", "linear_out"),
    "w_gate": ("model.layers.{i}.mlp.gate_proj.weight", "linear_in"),
    "w_up": ("model.layers.{i}.mlp.up_proj.weight", "linear_in"),
    "w_down": ("model.layers.{i}.mlp.down_proj.weight", "linear_in"),
}
# Tensors some checkpoints carry that hold nothing the model needs.
_IGNORED = re.compile(r".*\.rotary_emb\.inv_freq$")


def _hf_tensors(state: nnx.State, cfg: config_lib.ModelConfig):
  """Yields (our name, layer or None, HF name, HF shape) for every tensor, in file order."""
  for name, var in sorted(nnx.to_flat_state(state), key=lambda kv: _order(kv[0][0])):
    name = name[0]
    if name not in _MAPPING:
      raise KeyError(f"parameter {name!r} has no row in the HF mapping table")
    hf_name, layout = _MAPPING[name]
    shape = var.get_value().shape
    to_hf = _LAYOUTS[layout][1]
    if "{i}" in hf_name:
      hf_shape = to_hf(np.empty(shape[1:], np.int8)).shape
      for i in range(cfg.num_layers):
        yield name, i, hf_name.format(i=i), hf_shape
    else:
      yield name, None, hf_name, to_hf(np.empty(shape, np.int8)).shape


def _order(name: str) -> tuple[int, str]:
  keys = list(_MAPPING)
  return (keys.index(name) if name in keys else len(keys), name)


def _open_checkpoint(hf_dir: str) -> dict[str, SafetensorsReader]:
  """HF tensor name -> the reader of the file that holds it (single or sharded safetensors)."""
  index_path = os.path.join(hf_dir, "model.safetensors.index.json")
  single_path = os.path.join(hf_dir, "model.safetensors")
  if os.path.isfile(index_path):
    with open(index_path) as f:
      weight_map = json.load(f)["weight_map"]
    readers = {}
    for fname in sorted(set(weight_map.values())):
      path = os.path.join(hf_dir, fname)
      if not os.path.isfile(path):
        raise CheckpointError(f"{index_path} names {fname}, which does not exist")
      readers[fname] = SafetensorsReader(path)
    out = {}
    for name, fname in weight_map.items():
      if name not in readers[fname].keys():
        raise CheckpointError(f"{index_path} puts tensor {name!r} in {fname}, which lacks it")
      out[name] = readers[fname]
    return out
  if os.path.isfile(single_path):
    reader = SafetensorsReader(single_path)
    return {name: reader for name in reader.keys()}
  raise CheckpointError(f"{hf_dir}: no model.safetensors or model.safetensors.index.json "
                        "(PyTorch .bin checkpoints are not supported: re-save with safetensors)")


def from_pretrained(hf_dir: str, *, mesh=None, rules=None, param_dtype: str = "float32",
                    dtype: str = "float32", remat: str = "none",
                    logprob_chunk: int = 512, layer_loop: str = "auto") -> Transformer:
  """Loads a HF Qwen2/Llama checkpoint directory as a `Transformer`.

  Every tensor is checked (present, right shape, nothing unexpected) before anything is
  allocated; then each layer's tensor is read from the mmapped file and placed directly onto its
  target sharding (`mesh` with the logical `rules`, or the default device), one at a time.
  """
  cfg = config_lib.load_hf_config(hf_dir, param_dtype=param_dtype, dtype=dtype, remat=remat,
                                  logprob_chunk=logprob_chunk, layer_loop=layer_loop)
  files = _open_checkpoint(hf_dir)
  graphdef, abstract_state = nnx.split(abstract_model(cfg))
  wanted = list(_hf_tensors(abstract_state, cfg))

  for _, _, hf_name, hf_shape in wanted:
    if hf_name not in files:
      raise CheckpointError(f"{hf_dir}: missing tensor {hf_name!r} (expected shape {list(hf_shape)})")
    found = files[hf_name].shape(hf_name)
    if tuple(found) != tuple(hf_shape):
      raise CheckpointError(f"{hf_dir}: tensor {hf_name!r} has shape {list(found)}, "
                            f"expected {list(hf_shape)}")
  known = {w[2] for w in wanted}
  for name in files:
    if name in known or _IGNORED.match(name):
      continue
    if name == "lm_head.weight" and cfg.tie_word_embeddings:
      continue  # some tied checkpoints store the (identical) head anyway
    raise CheckpointError(f"{hf_dir}: unexpected tensor {name!r}: the checkpoint does not match "
                          f"its config ({cfg.architecture}, {cfg.num_layers} layers)")

  if mesh is not None:
    full_shardings = sharding_lib.state_shardings(
        abstract_state, mesh, rules or sharding_lib.LOGICAL_RULES)
  pd = np.dtype(jnp.dtype(param_dtype))

  def load(path, var):
    name = path[0].key
    hf_name, layout = _MAPPING[name]
    to_ours = _LAYOUTS[layout][0]
    shape = var.get_value().shape
    if mesh is not None:
      full = full_shardings[name].get_value()
      per_layer = NamedSharding(mesh, PartitionSpec(*full.spec[1:]))
    else:
      full = per_layer = SingleDeviceSharding(jax.devices()[0])

    def put(host_name, our_shape, sharding):
      host = np.asarray(to_ours(files[host_name].get(host_name), our_shape), dtype=pd)
      return jax.make_array_from_callback(our_shape, sharding, lambda idx: host[idx])

    if "{i}" not in hf_name:
      return var.replace(put(hf_name, shape, full))
    layers = [put(hf_name.format(i=i), shape[1:], per_layer) for i in range(cfg.num_layers)]
    stacked = jax.jit(lambda *xs: jnp.stack(xs), out_shardings=full)(*layers)
    del layers
    return var.replace(stacked)

  state = jax.tree_util.tree_map_with_path(load, abstract_state,
                                           is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.merge(graphdef, state)


def _to_host(x: jax.Array) -> np.ndarray:
  if x.is_fully_addressable:
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def save_pretrained(model: Transformer, out_dir: str, tokenizer_dir: str | None = None, *,
                    dtype: str | None = None, max_shard_bytes: int = 4 * 2**30,
                    generation_config: dict | None = None) -> None:
  """Writes a HF checkpoint directory that transformers and vLLM load unchanged.

  Writes config.json, generation_config.json, model-0000k-of-0000n.safetensors with
  model.safetensors.index.json, and the tokenizer files of `tokenizer_dir` if given. Tensors are
  streamed one layer at a time in `dtype` (default: the parameter dtype). The directory is built
  under a temporary name and swapped in at the end, so an existing export is never left
  half-written. With several processes, all must call it; process 0 writes.
  """
  cfg: config_lib.ModelConfig = model.config
  out_dtype = np.dtype(jnp.dtype(dtype or cfg.param_dtype))
  state = nnx.state(model, nnx.Param)
  tensors = list(_hf_tensors(state, cfg))
  writer = jax.process_index() == 0

  # Plan shards from shapes alone, then stream.
  shards, current, size = [], [], 0
  for t in tensors:
    nbytes = int(np.prod(t[3])) * out_dtype.itemsize
    if current and size + nbytes > max_shard_bytes:
      shards.append(current)
      current, size = [], 0
    current.append(t)
    size += nbytes
  shards.append(current)
  n = len(shards)

  parent = os.path.dirname(os.path.abspath(out_dir)) or "."
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".tmp-", dir=parent) if writer else None
  try:
    weight_map, total = {}, 0
    for k, shard in enumerate(shards):
      fname = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
      specs = [(hf_name, hf_shape, out_dtype) for _, _, hf_name, hf_shape in shard]

      def produce(shard=shard):
        for name, layer, _, _ in shard:
          x = state[name].get_value()
          x = x if layer is None else x[layer]
          host = _to_host(x.astype(out_dtype))  # cast on the devices: fewer bytes gathered
          yield np.asarray(_LAYOUTS[_MAPPING[name][1]][1](host), dtype=out_dtype)

      if writer:
        write_file(os.path.join(tmp, fname), specs, produce())
      else:
        for _ in produce():  # every process joins the gathers
          pass
      for name, shape, _ in specs:
        weight_map[name] = fname
        total += int(np.prod(shape)) * out_dtype.itemsize
    if not writer:
      return
    write_json(os.path.join(tmp, "model.safetensors.index.json"),
               {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    hf_config = config_lib.to_hf_dict(cfg)
    hf_config["torch_dtype"] = str(jnp.dtype(out_dtype))
    write_json(os.path.join(tmp, "config.json"), hf_config, indent=2)
    gen = {k: v for k, v in (("bos_token_id", cfg.bos_token_id),
                             ("eos_token_id", hf_config.get("eos_token_id"))) if v is not None}
    gen.update(generation_config or {})
    write_json(os.path.join(tmp, "generation_config.json"), gen, indent=2)
    if tokenizer_dir is not None:
      from autocode_jax.models.tokenizer import tokenizer_files
      for src in tokenizer_files(tokenizer_dir):
        shutil.copyfile(src, os.path.join(tmp, os.path.basename(src)))
    _swap_in(tmp, out_dir)
    tmp = None
  finally:
    if tmp is not None:
      shutil.rmtree(tmp, ignore_errors=True)




def _swap_in(tmp: str, out_dir: str) -> None:
  """Replaces out_dir by tmp; the old directory is removed only once the new one is in place."""
  if os.path.lexists(out_dir):
    old = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".old-",
                           dir=os.path.dirname(os.path.abspath(out_dir)))
    os.rmdir(old)
    os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)
  else:
    os.rename(tmp, out_dir)
