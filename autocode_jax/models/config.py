"""Model configuration: one frozen dataclass, presets, and reading/writing HuggingFace `config.json`."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

# HF `architectures[0]` -> our architecture name.
ARCHITECTURES = {"Qwen2ForCausalLM": "qwen2", "LlamaForCausalLM": "llama"}
_HF_CLASS = {v: k for k, v in ARCHITECTURES.items()}
DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")
LAYER_LOOPS = ("auto", "scan", "unroll")
# layer_loop=auto unrolls models of at most this many layers: on 2 CPU cores the unrolled step of
# a 4-layer model took 486 ms against 655 ms scanned (no stacked residual buffers to fill and
# copy); beyond it the scan keeps a 28-layer model's compile time that of one layer.
UNROLL_MAX_LAYERS = 8


class ConfigError(ValueError):
  """A model configuration (a dataclass field or a `config.json` key) is invalid."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """A decoder-only transformer of the Qwen2 / Llama family.

  Architecture fields mirror HuggingFace's `config.json`; the last four are runtime settings that
  do not change what the model computes in exact arithmetic.

  Attributes:
    architecture: "qwen2" (Qwen2, Qwen2.5, Qwen2-Math) or "llama" (DeepSeek-Math-7B).
    vocab_size: rows of the embedding table.
    hidden_size: model width D.
    intermediate_size: SwiGLU width F.
    num_layers: decoder blocks L.
    num_heads: query heads H.
    num_kv_heads: key/value heads K (grouped-query attention; H % K == 0).
    head_dim: per-head width; HF's default is hidden_size // num_heads.
    rope_theta: RoPE base frequency.
    rms_norm_eps: RMSNorm epsilon.
    tie_word_embeddings: the LM head reuses the embedding table.
    attention_bias: q/k/v projections have biases (True for Qwen2, False for Llama).
    max_position_embeddings: longest context the checkpoint was trained for (informational).
    bos_token_id, eos_token_id: written back into `config.json` / `generation_config.json`.
    param_dtype: dtype parameters are stored in.
    dtype: dtype activations and matmuls run in (softmax, norms and log-probs are always fp32).
    remat: activation-checkpoint policy of each decoder block, one of REMAT_POLICIES.
    logprob_chunk: sequence chunk of the chunked log-prob function (bounds fp32 logits memory).
    layer_loop: how the decoder blocks run, one of LAYER_LOOPS: `scan` (one compiled block under
      jax.lax.scan), `unroll` (one block per layer in the program) or `auto` (unroll up to
      UNROLL_MAX_LAYERS layers). The results are the same; only speed and compile time differ.
  """

  architecture: str
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_theta: float
  rms_norm_eps: float = 1e-6
  tie_word_embeddings: bool = False
  attention_bias: bool = True
  max_position_embeddings: int = 32768
  bos_token_id: int | None = None
  eos_token_id: int | tuple[int, ...] | None = None
  param_dtype: str = "float32"
  dtype: str = "float32"
  remat: str = "none"
  logprob_chunk: int = 512
  layer_loop: str = "auto"

  def __post_init__(self):
    if self.architecture not in _HF_CLASS:
      raise ConfigError(f"architecture={self.architecture!r}: expected one of {sorted(_HF_CLASS)}")
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                 "num_kv_heads", "head_dim", "logprob_chunk"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name}={value!r}: expected a positive integer")
    if self.num_heads % self.num_kv_heads:
      raise ConfigError(f"num_heads={self.num_heads} is not a multiple of "
                        f"num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      raise ConfigError(f"head_dim={self.head_dim}: RoPE needs an even head dimension")
    if not self.rope_theta > 0:
      raise ConfigError(f"rope_theta={self.rope_theta!r}: expected a positive number")
    for name in ("param_dtype", "dtype"):
      if getattr(self, name) not in DTYPES:
        raise ConfigError(f"{name}={getattr(self, name)!r}: expected one of {DTYPES}")
    if self.remat not in REMAT_POLICIES:
      raise ConfigError(f"remat={self.remat!r}: expected one of {REMAT_POLICIES}")
    if self.layer_loop not in LAYER_LOOPS:
      raise ConfigError(f"layer_loop={self.layer_loop!r}: expected one of {LAYER_LOOPS}")
    if isinstance(self.eos_token_id, list):
      object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  @property
  def unroll_layers(self) -> bool:
    """Whether the blocks run unrolled (see layer_loop)."""
    if self.layer_loop == "auto":
      return self.num_layers <= UNROLL_MAX_LAYERS
    return self.layer_loop == "unroll"

  @property
  def eos_token_ids(self) -> tuple[int, ...]:
    if self.eos_token_id is None:
      return ()
    return self.eos_token_id if isinstance(self.eos_token_id, tuple) else (self.eos_token_id,)


def from_hf_dict(d: dict[str, Any], source: str = "config.json", **settings) -> ModelConfig:
  """Builds a ModelConfig from a HF config dict, with transformers v4 or v5 keys.

  `settings` sets the runtime fields (param_dtype, dtype, remat, logprob_chunk, layer_loop).
  Anything the model cannot compute faithfully (sliding windows, RoPE scaling, other activations) is an error
  naming the key, never silently ignored.
  """
  archs = d.get("architectures") or []
  arch = archs[0] if archs else None
  if arch not in ARCHITECTURES:
    raise ConfigError(f"{source}: unknown architecture {arch!r} (architectures={archs!r}); "
                      f"supported: {sorted(ARCHITECTURES)}")

  def need(key):
    if key not in d:
      raise ConfigError(f"{source}: missing key {key!r}")
    return d[key]

  if d.get("hidden_act", "silu") != "silu":
    raise ConfigError(f"{source}: hidden_act={d['hidden_act']!r} is not supported (only 'silu')")
  if d.get("use_sliding_window"):
    raise ConfigError(f"{source}: use_sliding_window=true is not supported")
  if d.get("mlp_bias"):
    raise ConfigError(f"{source}: mlp_bias=true is not supported")

  # v4: top-level rope_theta (+ rope_scaling); v5: rope_parameters = {rope_type, rope_theta, ...}.
  rope = d.get("rope_parameters") or {}
  scaling = d.get("rope_scaling") or {}
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  scaling_type = scaling.get("rope_type", scaling.get("type", "default"))
  if rope_type != "default" or scaling_type != "default":
    raise ConfigError(f"{source}: RoPE scaling {rope_type if rope_type != 'default' else scaling_type!r}"
                      " is not supported")
  if "rope_theta" in d:
    rope_theta = d["rope_theta"]
  elif "rope_theta" in rope:
    rope_theta = rope["rope_theta"]
  else:
    raise ConfigError(f"{source}: missing key 'rope_theta' (top level or in 'rope_parameters')")

  model_type = ARCHITECTURES[arch]
  hidden, heads = need("hidden_size"), need("num_attention_heads")
  return ModelConfig(
      architecture=model_type,
      vocab_size=need("vocab_size"),
      hidden_size=hidden,
      intermediate_size=need("intermediate_size"),
      num_layers=need("num_hidden_layers"),
      num_heads=heads,
      num_kv_heads=d.get("num_key_value_heads") or heads,
      head_dim=d.get("head_dim") or hidden // heads,
      rope_theta=float(rope_theta),
      rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
      tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
      attention_bias=(True if model_type == "qwen2" else bool(d.get("attention_bias", False))),
      max_position_embeddings=int(d.get("max_position_embeddings", 32768)),
      bos_token_id=d.get("bos_token_id"),
      eos_token_id=d.get("eos_token_id"),
      **settings,
  )


def load_hf_config(path: str, **settings) -> ModelConfig:
  """Reads `config.json` (a file, or a directory holding one)."""
  if os.path.isdir(path):
    path = os.path.join(path, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no model config at {path}")
  with open(path) as f:
    try:
      d = json.load(f)
    except json.JSONDecodeError as e:
      raise ConfigError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
  return from_hf_dict(d, source=path, **settings)


def to_hf_dict(cfg: ModelConfig) -> dict[str, Any]:
  """The `config.json` transformers (v4 and v5) and vLLM load; written with v4 keys."""
  d = {
      "architectures": [_HF_CLASS[cfg.architecture]],
      "model_type": cfg.architecture,
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.hidden_size,
      "intermediate_size": cfg.intermediate_size,
      "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_dim,
      "hidden_act": "silu",
      "rope_theta": cfg.rope_theta,
      "rms_norm_eps": cfg.rms_norm_eps,
      "tie_word_embeddings": cfg.tie_word_embeddings,
      "max_position_embeddings": cfg.max_position_embeddings,
      "torch_dtype": cfg.param_dtype,
      "use_cache": True,
      "attention_dropout": 0.0,
      "initializer_range": 0.02,
  }
  if cfg.architecture == "qwen2":
    d["use_sliding_window"] = False
  else:
    d["attention_bias"] = cfg.attention_bias
    d["mlp_bias"] = False
  if cfg.bos_token_id is not None:
    d["bos_token_id"] = cfg.bos_token_id
  if cfg.eos_token_id is not None:
    d["eos_token_id"] = (list(cfg.eos_token_id) if isinstance(cfg.eos_token_id, tuple)
                         else cfg.eos_token_id)
  return d


def _qwen2(hidden, inter, layers, heads, kv, theta, tied, vocab, max_pos):
  return {"architectures": ["Qwen2ForCausalLM"], "hidden_size": hidden, "intermediate_size": inter,
          "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
          "rope_theta": theta, "tie_word_embeddings": tied, "vocab_size": vocab,
          "max_position_embeddings": max_pos, "rms_norm_eps": 1e-6,
          "bos_token_id": 151643, "eos_token_id": 151643}


# HF-style dicts, so presets go through the same parser as a checkpoint's config.json
# (tests check them against ../shared/data/model_configs).
_PRESETS = {
    "qwen2.5-0.5b": _qwen2(896, 4864, 24, 14, 2, 1e6, True, 151936, 32768),
    "qwen2.5-1.5b": _qwen2(1536, 8960, 28, 12, 2, 1e6, True, 151936, 131072),
    "qwen2.5-7b": _qwen2(3584, 18944, 28, 28, 4, 1e6, False, 152064, 131072),
    "qwen2.5-math-1.5b": _qwen2(1536, 8960, 28, 12, 2, 1e4, True, 151936, 4096),
    "qwen2.5-math-7b": _qwen2(3584, 18944, 28, 28, 4, 1e4, False, 152064, 4096),
    "deepseek-math-7b": {
        "architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 11008,
        "num_hidden_layers": 30, "num_attention_heads": 32, "num_key_value_heads": 32,
        "rope_theta": 10000.0, "tie_word_embeddings": False, "vocab_size": 102400,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
        "bos_token_id": 100000, "eos_token_id": 100001},
    # Tiny configs for tests and the CPU default; head_dim 32 because vLLM needs >= 32.
    "tiny-qwen2": _qwen2(128, 256, 2, 4, 2, 1e4, True, 512, 2048),
    "tiny-llama": {
        "architectures": ["LlamaForCausalLM"], "hidden_size": 128, "intermediate_size": 256,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
        "rope_theta": 1e4, "tie_word_embeddings": False, "vocab_size": 512,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-6,
        "bos_token_id": 1, "eos_token_id": 2},
}
PRESET_NAMES = tuple(_PRESETS)


def preset(name: str, **settings) -> ModelConfig:
  """A named configuration (see PRESET_NAMES) with optional runtime settings."""
  if name not in _PRESETS:
    raise ConfigError(f"unknown model preset {name!r}; known: {', '.join(PRESET_NAMES)}")
  return from_hf_dict(_PRESETS[name], source=f"preset {name!r}", **settings)
