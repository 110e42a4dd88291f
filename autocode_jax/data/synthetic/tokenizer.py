"""A tokenizer built locally for the synthetic task: byte-level BPE (so decode(encode(text)) is
the text, as the tool loop needs) trained on the task's prompts and solutions, written as a
HuggingFace tokenizer directory that models.load_tokenizer, transformers and vLLM read."""

from __future__ import annotations

import os
import tempfile
from typing import Iterable

from autocode_jax.files import write_json

EOS = "<|endoftext|>"
SPECIAL = (EOS, "<|im_start|>", "<|im_end|>")


def build_tokenizer(texts: Iterable[str], out_dir: str, vocab_size: int = 512) -> str:
  """Trains the BPE on `texts` and writes tokenizer.json and tokenizer_config.json (EOS and
  padding: <|endoftext|>; no chat template: prompts use the plain template) into out_dir,
  atomically. The result depends only on the texts and vocab_size."""
  import tokenizers
  from tokenizers import decoders, models, pre_tokenizers, trainers
  tok = tokenizers.Tokenizer(models.BPE())
  # Digits one by one: copying a number into code, or an answer out of an output block, is
  # then the same few moves for every number, which a tiny model learns quickly.
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Digits(individual_digits=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(texts, trainer=trainer)
  parent = os.path.dirname(os.path.abspath(out_dir))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".tokenizer-", dir=parent)
  tok.save(os.path.join(tmp, "tokenizer.json"))
  write_json(os.path.join(tmp, "tokenizer_config.json"),
             {"eos_token": EOS, "pad_token": EOS, "model_max_length": 4096,
              "tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False})
  if os.path.isdir(out_dir):
    import shutil
    shutil.rmtree(out_dir)
  os.replace(tmp, out_dir)
  return out_dir
