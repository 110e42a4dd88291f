"""Tiny random HuggingFace checkpoints built with transformers, for parity and interop tests."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

VOCAB = 320


def tiny_hf_model(kind: str, seed: int = 0):
  """A random transformers model. kind: qwen2-tied-kv1, qwen2-untied-kv2, llama."""
  common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=256, rms_norm_eps=1e-6,
                bos_token_id=1, eos_token_id=2)
  torch.manual_seed(seed)
  if kind == "qwen2-tied-kv1":
    model = Qwen2ForCausalLM(Qwen2Config(num_key_value_heads=1, rope_theta=10000.0,
                                         tie_word_embeddings=True, **common))
  elif kind == "qwen2-untied-kv2":
    model = Qwen2ForCausalLM(Qwen2Config(num_key_value_heads=2, rope_theta=1e6,
                                         tie_word_embeddings=False, **common))
  elif kind == "llama":
    model = LlamaForCausalLM(LlamaConfig(num_key_value_heads=4, rope_theta=10000.0,
                                         tie_word_embeddings=False, **common))
  else:
    raise ValueError(kind)
  # HF initialises biases to 0 and norms to 1; randomise everything so each mapping is exercised.
  with torch.no_grad():
    for p in model.parameters():
      p.normal_(0.0, 0.2)
  return model.eval()


def save_tiny(kind: str, path, dtype=torch.float32, seed: int = 0):
  model = tiny_hf_model(kind, seed).to(dtype)
  model.save_pretrained(path, safe_serialization=True)
  return model


def hf_logits(model, tokens, mask=None, positions=None):
  with torch.no_grad():
    out = model(torch.as_tensor(tokens),
                attention_mask=None if mask is None else torch.as_tensor(mask),
                position_ids=None if positions is None else torch.as_tensor(positions))
  return out.logits.float().numpy()
