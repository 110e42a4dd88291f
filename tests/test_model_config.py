"""Model configs: presets against the shipped HF configs, v4/v5 keys, validation, param counts."""

import json

import pytest

from autocode_jax.models import config as config_lib
from autocode_jax.models.transformer import count_params

SHIPPED = {
    "qwen2.5-0.5b": "qwen2.5-0.5b.json",
    "qwen2.5-1.5b": "qwen2.5-1.5b.json",
    "qwen2.5-7b": "qwen2.5-7b.json",
    "qwen2.5-math-1.5b": "qwen2.5-math-1.5b.json",
    "qwen2.5-math-7b": "qwen2.5-math-7b.json",
    "deepseek-math-7b": "deepseek-math-7b.json",
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_preset_equals_shipped_config(name, shared_dir):
  path = shared_dir / "data" / "model_configs" / SHIPPED[name]
  assert config_lib.preset(name) == config_lib.load_hf_config(str(path))


@pytest.mark.parametrize("name, expected", [
    ("qwen2.5-0.5b", 494_032_768),
    ("qwen2.5-7b", 7_615_616_512),
    ("deepseek-math-7b", 6_910_365_696),
])
def test_param_count_without_allocating(name, expected):
  assert count_params(config_lib.preset(name)) == expected


def test_v5_keys_read_like_v4(shared_dir):
  with open(shared_dir / "data" / "model_configs" / "qwen2.5-7b.json") as f:
    v4 = json.load(f)
  v5 = dict(v4)
  theta = v5.pop("rope_theta")
  v5["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
  v5["dtype"] = v5.pop("torch_dtype")
  assert config_lib.from_hf_dict(v5) == config_lib.from_hf_dict(v4)


def test_to_hf_dict_round_trips():
  for name in config_lib.PRESET_NAMES:
    cfg = config_lib.preset(name)
    assert config_lib.from_hf_dict(config_lib.to_hf_dict(cfg)) == cfg


def test_unknown_architecture_is_named(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"architectures": ["MistralForCausalLM"]}))
  with pytest.raises(config_lib.ConfigError, match="MistralForCausalLM"):
    config_lib.load_hf_config(str(tmp_path))


@pytest.mark.parametrize("change, key", [
    ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "yarn"),
    ({"use_sliding_window": True}, "use_sliding_window"),
    ({"hidden_act": "gelu"}, "hidden_act"),
])
def test_unsupported_features_fail(change, key, shared_dir):
  with open(shared_dir / "data" / "model_configs" / "qwen2.5-0.5b.json") as f:
    d = json.load(f)
  d.update(change)
  with pytest.raises(config_lib.ConfigError, match=key):
    config_lib.from_hf_dict(d)


def test_missing_key_is_named():
  d = config_lib.to_hf_dict(config_lib.preset("tiny-qwen2"))
  del d["intermediate_size"]
  with pytest.raises(config_lib.ConfigError, match="intermediate_size"):
    config_lib.from_hf_dict(d)


@pytest.mark.parametrize("field, value", [
    ("num_kv_heads", 3), ("dtype", "float8"), ("remat", "sometimes"), ("hidden_size", 0),
])
def test_invalid_settings_name_the_field(field, value):
  with pytest.raises(config_lib.ConfigError, match=field):
    config_lib.preset("tiny-qwen2").replace(**{field: value})


def test_unknown_preset_lists_known():
  with pytest.raises(config_lib.ConfigError, match="qwen2.5-7b"):
    config_lib.preset("qwen3-7b")
