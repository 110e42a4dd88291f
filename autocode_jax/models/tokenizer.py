"""Tokenizer loading from a local HF tokenizer directory, with chat and plain prompt templates."""

from __future__ import annotations

import json
import os
from typing import Sequence

import jinja2
import jinja2.sandbox
import tokenizers

_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
          "special_tokens_map.json", "added_tokens.json", "chat_template.jinja")

TEMPLATES = ("chat", "plain")


class TokenizerError(ValueError):
  """A tokenizer directory is incomplete or inconsistent."""


def tokenizer_files(path: str) -> list[str]:
  """The tokenizer files of a directory.

  A directory holding tokenizer.json but no tokenizer_config.json takes the missing files from
  its parent: the layout of `shared/data/tokenizers/qwen2.5`, whose `derived/tokenizer.json` was
  built from the vocab, merges and config beside it.
  """
  if not os.path.isdir(path):
    raise TokenizerError(f"tokenizer directory {path} does not exist")
  dirs = [path]
  if (os.path.isfile(os.path.join(path, "tokenizer.json"))
      and not os.path.isfile(os.path.join(path, "tokenizer_config.json"))):
    dirs.append(os.path.dirname(os.path.abspath(path)))
  found = {}
  for d in dirs:
    for name in _FILES:
      p = os.path.join(d, name)
      if name not in found and os.path.isfile(p):
        found[name] = p
  for name in ("tokenizer.json", "tokenizer_config.json"):
    if name not in found:
      raise TokenizerError(f"{path}: missing {name}")
  return [found[n] for n in _FILES if n in found]


def _token_text(value) -> str | None:
  return value.get("content") if isinstance(value, dict) else value


class Tokenizer:
  """A fast HF tokenizer with the special tokens and chat template of its tokenizer_config.json."""

  def __init__(self, path: str):
    self.files = tokenizer_files(path)
    by_name = {os.path.basename(f): f for f in self.files}
    self._tok = tokenizers.Tokenizer.from_file(by_name["tokenizer.json"])
    cfg_path = by_name["tokenizer_config.json"]
    with open(cfg_path) as f:
      self.config = json.load(f)
    self.chat_template = self.config.get("chat_template")
    if "chat_template.jinja" in by_name:
      with open(by_name["chat_template.jinja"]) as f:
        self.chat_template = f.read()
    self.eos_token = _token_text(self.config.get("eos_token"))
    self.pad_token = _token_text(self.config.get("pad_token")) or self.eos_token
    self.bos_token = _token_text(self.config.get("bos_token"))
    self.eos_token_id = self._id(self.eos_token, cfg_path, "eos_token")
    self.pad_token_id = self._id(self.pad_token, cfg_path, "pad_token")
    self.bos_token_id = self._id(self.bos_token, cfg_path, "bos_token")
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, indent=indent, ensure_ascii=False)
    env.globals["raise_exception"] = self._raise
    self._chat = None if self.chat_template is None else env.from_string(self.chat_template)

  @staticmethod
  def _raise(message):
    raise TokenizerError(f"chat template: {message}")

  def _id(self, token: str | None, source: str, field: str) -> int | None:
    if token is None:
      return None
    i = self._tok.token_to_id(token)
    if i is None:
      raise TokenizerError(f"{source}: {field} {token!r} is not in the vocabulary")
    return i

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str) -> list[int]:
    """Token ids of text; special-token strings in it are parsed as special tokens."""
    return self._tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

  def render(self, messages: list[dict], template: str = "chat",
             add_generation_prompt: bool = True) -> str:
    """The prompt text of `messages` ({"role", "content"} dicts) under the chat or plain template."""
    if template not in TEMPLATES:
      raise TokenizerError(f"template={template!r}: expected one of {TEMPLATES}")
    if template == "plain":
      # Base models have no chat format: the texts, separated by blank lines. The wording of the
      # prompts themselves lives with the prompts, not here.
      text = "\n\n".join(m["content"] for m in messages)
      return text + "\n\n" if add_generation_prompt else text
    if self._chat is None:
      raise TokenizerError(f"{self.files[0]}: this tokenizer has no chat_template; "
                           "use template='plain' for base models")
    return self._chat.render(
        messages=messages, add_generation_prompt=add_generation_prompt,
        eos_token=self.eos_token, bos_token=self.bos_token, tools=None)


def load_tokenizer(path: str) -> Tokenizer:
  """Loads the tokenizer of a local HF tokenizer (or model) directory."""
  return Tokenizer(path)
