"""Config dataclasses as absl flags: the one way a setting reaches its flag.

A config field declares its flag where it is defined, with `option(default, help)` (or
`required(help)`): the flag has the field's name, type, default and help; `choices=` makes it
an enum. A field whose default is itself a config dataclass (RunConfig.optimizer, .loss,
.rollout) contributes that dataclass's flags, flat, with that default instance's values as
defaults. A field with a plain default has no flag (the code sets it, e.g. LossConfig.kind).

  define_flags(RunConfig, fv)   # every flag, once
  from_flags(RunConfig, fv)     # the config of the parsed flags

A bad value raises ConfigError(field, message); `bad_flags_exit` prints it as
`<script>: bad flag: --<field>: ...` and exits 2.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import typing

from absl import flags


class ConfigError(ValueError):
  """A bad setting; `field` is the offending field (= flag) name."""

  def __init__(self, field: str, message: str):
    super().__init__(f"{field}: {message}")
    self.field = field


def requirer(config):
  """need(ok, field, message) for a config's __post_init__: ConfigError naming the field (a
  flag: its own, or one of a nested config's) and its value unless ok."""
  def need(ok: bool, field: str, message: str) -> None:
    if not ok:
      raise ConfigError(field, f"{message} (got {flag_value(config, field)!r})")
  return need


def check_choices(config) -> None:
  """ConfigError naming the first field whose value is not one of its option's `choices`: the
  one check every config's enum fields get (a config is also built without flags)."""
  need = requirer(config)
  for f in dataclasses.fields(config):
    if f.metadata.get("choices"):
      need(getattr(config, f.name) in f.metadata["choices"], f.name,
           f"expected one of {f.metadata['choices']}")


def flag_value(config, name: str):
  """The value of flag `name` in a config: its field, or a field of a nested config."""
  if name in {f.name for f in dataclasses.fields(config)}:
    return getattr(config, name)
  for f, _, nested in _flag_fields(type(config)):
    if nested is not None:
      try:
        return flag_value(getattr(config, f.name), name)
      except KeyError:
        pass
  raise KeyError(name)


def flat(config) -> dict:
  """{flag name: value} of a config and its nested configs, in definition order."""
  out = {}
  for f in dataclasses.fields(config):
    v = getattr(config, f.name)
    out.update(flat(v) if dataclasses.is_dataclass(v) else {f.name: v})
  return out


def option(default, help: str, *, choices=None):  # noqa: A002 (absl's word)
  """A dataclass field that is a flag of the same name (see the module docstring)."""
  if isinstance(default, (list, dict, set)):
    raise TypeError("option: use a tuple default")
  return dataclasses.field(default=default,
                           metadata={"help": help, "choices": tuple(choices or ())})


def required(help: str):  # noqa: A002
  """A flag without a default: the config cannot be built from the flags without it."""
  return dataclasses.field(metadata={"help": help, "choices": ()})


def _flag_fields(cls):
  """(field, type, nested config class or None) of cls's fields that are or hold flags."""
  hints = typing.get_type_hints(cls)
  for f in dataclasses.fields(cls):
    if "help" in f.metadata:
      yield f, hints[f.name], None
    elif dataclasses.is_dataclass(f.default):
      yield f, hints[f.name], type(f.default)


def define_flags(cls, fv: flags.FlagValues = flags.FLAGS, defaults=None) -> None:
  """A flag per option of `cls` and of its nested configs. A nested config's flags default to
  the values of the instance its field defaults to (EvalConfig's rollout settings may default
  otherwise than RunConfig's); `defaults` is that instance."""
  for f, kind, nested in _flag_fields(cls):
    if nested is not None:
      define_flags(nested, fv, getattr(defaults, f.name) if defaults is not None else f.default)
      continue
    default = None if f.default is dataclasses.MISSING else f.default
    if defaults is not None:
      default = getattr(defaults, f.name)
    text, choices = f.metadata["help"], f.metadata["choices"]
    if choices:
      flags.DEFINE_enum(f.name, default, choices, text, flag_values=fv)
    elif kind is bool:
      flags.DEFINE_bool(f.name, default, text, flag_values=fv)
    elif kind is int:
      flags.DEFINE_integer(f.name, default, text, flag_values=fv)
    elif kind in (float, float | None):
      flags.DEFINE_float(f.name, default, text, flag_values=fv)
    elif kind == tuple[str, ...]:
      flags.DEFINE_list(f.name, list(default or ()), text, flag_values=fv)
    elif kind is str:
      flags.DEFINE_string(f.name, default, text, flag_values=fv)
    else:
      raise TypeError(f"{cls.__name__}.{f.name}: no flag type for {kind}")


def from_flags(cls, fv: flags.FlagValues = flags.FLAGS):
  """`cls` built from the parsed flags, lists as tuples. A required flag left unset, or a
  value its class refuses, raises ConfigError naming the flag."""
  kwargs = {}
  for f, _, nested in _flag_fields(cls):
    if nested is not None:
      kwargs[f.name] = from_flags(nested, fv)
      continue
    value = fv[f.name].value
    if value is None and f.default is dataclasses.MISSING:
      raise ConfigError(f.name, "required")
    kwargs[f.name] = tuple(value) if isinstance(value, list) else value
  return cls(**kwargs)


@contextlib.contextmanager
def bad_flags_exit(script: str):
  """Around an entry point's flag checks: a bad setting (ConfigError, naming its flag, or
  absl's ValidationError) is printed as `<script>: bad flag: ...` on stderr and exits 2."""
  try:
    yield
  except ConfigError as e:
    print(f"{script}: bad flag: --{e}", file=sys.stderr)
    sys.exit(2)
  except flags.ValidationError as e:
    print(f"{script}: bad flag: {e}", file=sys.stderr)
    sys.exit(2)
