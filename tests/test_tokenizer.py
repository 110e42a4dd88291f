"""Tokenizer loading and templates, checked against transformers' tokenizer on the same files."""

import shutil

import pytest
from transformers import AutoTokenizer

from autocode_jax.models import TokenizerError, load_tokenizer
from autocode_jax.models.tokenizer import tokenizer_files

MESSAGES = [{"role": "user", "content": "What is $3^4 \\cdot 2$? Use ```python``` if you like."}]
TEXT = "Let's compute: 3**4 = 81, so 81 * 2 = 162.\n```python\nprint(3**4*2)\n```\n\\boxed{162}"


@pytest.fixture(scope="module")
def tok_dir(shared_dir):
  return shared_dir / "data" / "tokenizers" / "qwen2.5" / "derived"


@pytest.fixture(scope="module")
def reference(tok_dir, tmp_path_factory):
  """transformers' tokenizer, from the same files gathered into one directory."""
  d = tmp_path_factory.mktemp("hf_tok")
  for f in tokenizer_files(str(tok_dir)):
    shutil.copy(f, d)
  return AutoTokenizer.from_pretrained(str(d))


def test_files_beside_derived_are_found(tok_dir):
  names = [p.rsplit("/", 1)[1] for p in tokenizer_files(str(tok_dir))]
  assert names[:2] == ["tokenizer.json", "tokenizer_config.json"]
  assert {"vocab.json", "merges.txt"} <= set(names)


def test_encode_decode_match_transformers(tok_dir, reference):
  tok = load_tokenizer(str(tok_dir))
  ids = tok.encode(TEXT + "<|im_end|>")
  assert ids == reference.encode(TEXT + "<|im_end|>", add_special_tokens=False)
  assert ids[-1] == 151645
  assert tok.decode(ids) == TEXT + "<|im_end|>"
  assert tok.decode(ids, skip_special_tokens=True) == TEXT
  assert tok.eos_token_id == reference.eos_token_id == 151643
  assert tok.pad_token_id == 151643 and tok.bos_token_id is None
  assert tok.vocab_size == len(reference)


@pytest.mark.parametrize("gen", [True, False])
@pytest.mark.parametrize("system", [False, True])
def test_chat_template_matches_transformers(tok_dir, reference, gen, system):
  tok = load_tokenizer(str(tok_dir))
  messages = ([{"role": "system", "content": "Be brief."}] if system else []) + MESSAGES
  if not gen:
    messages = messages + [{"role": "assistant", "content": TEXT}]
  want = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
  assert tok.render(messages, "chat", add_generation_prompt=gen) == want
  assert "<|im_start|>assistant\n" in want


def test_plain_template_for_base_models(tok_dir):
  tok = load_tokenizer(str(tok_dir))
  messages = [{"role": "system", "content": "Solve it."}] + MESSAGES
  assert tok.render(messages, "plain") == "Solve it.\n\n" + MESSAGES[0]["content"] + "\n\n"
  assert "<|im_start|>" not in tok.render(messages, "plain", add_generation_prompt=False)
  with pytest.raises(TokenizerError, match="template='fancy'"):
    tok.render(messages, "fancy")


def test_incomplete_directory_is_named(tmp_path):
  (tmp_path / "vocab.json").write_text("{}")
  with pytest.raises(TokenizerError, match="missing tokenizer.json"):
    load_tokenizer(str(tmp_path))
