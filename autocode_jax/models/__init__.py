"""The Qwen2/Llama decoder in Flax NNX, its configs, sharding rules, HF interop and tokenizer."""

from autocode_jax.models.config import (ConfigError, ModelConfig, PRESET_NAMES, from_hf_dict,
                                        load_hf_config, preset, to_hf_dict)
from autocode_jax.models.hf import CheckpointError, from_pretrained, save_pretrained
from autocode_jax.models.sharding import (LOGICAL_RULES, MESH_AXES, ShardingRuleError, constrain,
                                          make_mesh, shard_state, state_shardings)
from autocode_jax.models.tokenizer import Tokenizer, TokenizerError, load_tokenizer
from autocode_jax.models.transformer import (KVCache, Transformer, abstract_model, count_params,
                                             decode, forward, init_model, token_logprobs)
