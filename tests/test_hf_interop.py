"""Parity with transformers' PyTorch models, and HF <-> ours checkpoint round trips."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from autocode_jax.models import CheckpointError, ConfigError, from_pretrained, save_pretrained
from autocode_jax.models.safetensors_io import SafetensorsReader, write_file
from hf_fixtures import VOCAB, hf_logits, save_tiny

KINDS = ["qwen2-tied-kv1", "qwen2-untied-kv2", "llama"]


def _batch(seed=0, b=3, t=14):
  rng = np.random.RandomState(seed)
  tokens = rng.randint(0, VOCAB, (b, t))
  lengths = np.array([t, t - 5, t - 9])[:b]
  mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int64)
  return tokens, mask


@pytest.mark.parametrize("kind", KINDS)
def test_logits_match_transformers_right_padded(kind, tmp_path):
  hf = save_tiny(kind, tmp_path)
  ours = from_pretrained(str(tmp_path))
  tokens, mask = _batch()
  ref = hf_logits(hf, tokens, mask)
  got = np.asarray(ours(jnp.asarray(tokens), attention_mask_bt=jnp.asarray(mask)))
  real = mask.astype(bool)
  assert np.abs(got - ref)[real].max() <= 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_logits_match_transformers_left_padded(kind, tmp_path):
  hf = save_tiny(kind, tmp_path)
  ours = from_pretrained(str(tmp_path))
  tokens, mask = _batch(seed=1)
  mask = mask[:, ::-1].copy()
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  ref = hf_logits(hf, tokens, mask, positions)
  got = np.asarray(ours(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(mask)))
  real = mask.astype(bool)
  assert np.abs(got - ref)[real].max() <= 1e-4


def _state_dict_equal(a, b):
  sa, sb = a.state_dict(), b.state_dict()
  assert set(sa) == set(sb)
  for k in sa:
    assert sa[k].dtype == sb[k].dtype, k
    assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_is_bit_identical_and_loads_in_transformers(kind, tmp_path):
  hf = save_tiny(kind, tmp_path / "src")
  ours = from_pretrained(str(tmp_path / "src"))
  # A small shard limit forces several shards, as a 7B export has.
  save_pretrained(ours, str(tmp_path / "out"), max_shard_bytes=200_000)
  files = sorted(os.listdir(tmp_path / "out"))
  shards = [f for f in files if f.endswith(".safetensors")]
  assert len(shards) > 1 and "model.safetensors.index.json" in files
  assert {"config.json", "generation_config.json"} <= set(files)
  back = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
  _state_dict_equal(hf, back)
  tokens, mask = _batch(seed=2)
  np.testing.assert_array_equal(hf_logits(back, tokens, mask), hf_logits(hf, tokens, mask))


def test_bf16_round_trip_is_bit_identical(tmp_path):
  hf = save_tiny("qwen2-untied-kv2", tmp_path / "src", dtype=torch.bfloat16)
  ours = from_pretrained(str(tmp_path / "src"), param_dtype="bfloat16", dtype="bfloat16")
  assert ours.wq[...].dtype == jnp.bfloat16
  save_pretrained(ours, str(tmp_path / "out"))
  back = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), dtype=torch.bfloat16)
  _state_dict_equal(hf, back)


def test_export_dtype_and_tokenizer_files(tmp_path, shared_dir):
  save_tiny("qwen2-tied-kv1", tmp_path / "src")
  ours = from_pretrained(str(tmp_path / "src"))
  tok_dir = shared_dir / "data" / "tokenizers" / "qwen2.5" / "derived"
  save_pretrained(ours, str(tmp_path / "out"), tokenizer_dir=str(tok_dir), dtype="bfloat16")
  files = set(os.listdir(tmp_path / "out"))
  assert {"tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"} <= files
  cfg = json.loads((tmp_path / "out" / "config.json").read_text())
  assert cfg["torch_dtype"] == "bfloat16"
  back = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), dtype=torch.bfloat16)
  assert back.model.embed_tokens.weight.dtype == torch.bfloat16


def test_export_replaces_existing_directory_whole(tmp_path):
  save_tiny("llama", tmp_path / "src")
  ours = from_pretrained(str(tmp_path / "src"))
  out = tmp_path / "out"
  out.mkdir()
  (out / "stale.txt").write_text("from an earlier export")
  save_pretrained(ours, str(out))
  assert not (out / "stale.txt").exists()
  assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name] == []


def _rewrite_without(path, drop=None, reshape=None, add=None):
  """Rewrites a single-file checkpoint dropping / reshaping / adding one tensor."""
  reader = SafetensorsReader(str(path))
  arrays = {k: np.array(reader.get(k)) for k in reader.keys()}
  del reader
  if drop:
    del arrays[drop]
  if reshape:
    arrays[reshape] = arrays[reshape][:-1]
  if add:
    arrays[add] = np.zeros((2, 2), np.float32)
  specs = [(k, v.shape, v.dtype) for k, v in arrays.items()]
  write_file(str(path), specs, iter(arrays.values()))


def test_missing_tensor_is_named(tmp_path):
  save_tiny("qwen2-untied-kv2", tmp_path)
  name = "model.layers.1.self_attn.k_proj.bias"
  _rewrite_without(tmp_path / "model.safetensors", drop=name)
  with pytest.raises(CheckpointError, match=f"missing tensor '{name}'.*expected shape \\[32\\]"):
    from_pretrained(str(tmp_path))


def test_wrong_shape_is_named_with_both_shapes(tmp_path):
  save_tiny("llama", tmp_path)
  name = "model.layers.0.mlp.up_proj.weight"
  _rewrite_without(tmp_path / "model.safetensors", reshape=name)
  with pytest.raises(CheckpointError, match=f"'{name}' has shape \\[95, 64\\], expected \\[96, 64\\]"):
    from_pretrained(str(tmp_path))


def test_unexpected_tensor_is_named(tmp_path):
  save_tiny("llama", tmp_path)
  _rewrite_without(tmp_path / "model.safetensors", add="model.layers.2.mlp.up_proj.weight")
  with pytest.raises(CheckpointError, match="unexpected tensor 'model.layers.2.mlp.up_proj.weight'"):
    from_pretrained(str(tmp_path))


def test_unknown_architecture_is_named(tmp_path):
  save_tiny("llama", tmp_path)
  cfg = json.loads((tmp_path / "config.json").read_text())
  cfg["architectures"] = ["GPTNeoXForCausalLM"]
  (tmp_path / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(ConfigError, match="GPTNeoXForCausalLM"):
    from_pretrained(str(tmp_path))


def test_no_weights_is_an_error(tmp_path):
  save_tiny("llama", tmp_path)
  os.remove(tmp_path / "model.safetensors")
  with pytest.raises(CheckpointError, match="no model.safetensors"):
    from_pretrained(str(tmp_path))
