"""The D_train record: one trajectory the M-step trains on, as the E-step (or the sft baseline)
writes it and every reader takes it; one JSON object a line of iterations/<i>/dtrain.p<k>.jsonl.

Fields (in their order on a line; a field that is None is left out of the line):
  query_id, probe (vanilla | code_prefix | branch_code | branch_plain | sft), iteration,
  seed: the rollout request's seed (none for sft),
  label: 1 if the trajectory executed code, reward: 0/1 from the grader,
  prompt_ids [P]: the context (for a branch: the prompt and the trajectory up to the branch),
  token_ids [R]: the response, roles [R]: one letter per response token, p (the code-probe
    prefix), m (written by the model: the only tokens of the policy loss) or t (interpreter
    output), logprobs [R]: the engine's log-probs (0 for p and t tokens),
  tool_statuses, stop_reason, text: what the tool loop reported, and the response's text,
  advantage: the group-normalised reward,
  decision_ids: the tokens the decision term scores after prompt_ids (the probe prefix P, or the
    fence that opened a branch's code block); pi1 = pi(c=1|x), q = (Q(x,0), Q(x,1)), s_star =
    s*(c|x) of Eq. 5 (em only),
  group: one decision row per group (a query, or a branch), branch_at: a branch's position in
    the original response, mode: the sft example's prompt mode.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Iterable, Sequence

from autocode_jax.files import DataError, JsonlStore, shard_paths, write_jsonl

ROLE_CODES = {"prefix": "p", "model": "m", "tool": "t"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainRecord:
  """One D_train trajectory (see the module docstring for every field)."""
  query_id: str
  probe: str
  iteration: int
  seed: int | None = None
  label: int
  reward: float
  prompt_ids: tuple[int, ...]
  token_ids: tuple[int, ...]
  roles: str
  logprobs: tuple[float, ...]
  tool_statuses: tuple[str, ...] = ()
  stop_reason: str = ""
  text: str = ""
  advantage: float
  decision_ids: tuple[int, ...] | None = None
  pi1: float | None = None
  q: tuple[float, ...] | None = None
  s_star: tuple[float, ...] | None = None
  group: str
  branch_at: int | None = None
  mode: str | None = None

  def __post_init__(self):
    for f in dataclasses.fields(self):  # sequences as tuples, however given
      if isinstance(getattr(self, f.name), list):
        object.__setattr__(self, f.name, tuple(getattr(self, f.name)))
    n = len(self.token_ids)
    if len(self.roles) != n or len(self.logprobs) != n:
      raise DataError(f"roles: {n} token_ids, {len(self.roles)} roles and {len(self.logprobs)} "
                      "logprobs must agree")
    if set(self.roles) - set(ROLE_CODES.values()):
      raise DataError(f"roles: letters p/m/t expected (got {sorted(set(self.roles))})")
    for name in ("q", "s_star"):
      if getattr(self, name) is not None and len(getattr(self, name)) != 2:
        raise DataError(f"{name}: a pair (c=0, c=1) expected")

  @property
  def length(self) -> int:
    """Tokens of the trained row: context and response."""
    return len(self.prompt_ids) + len(self.token_ids)

  @property
  def model_mask(self) -> list[bool]:
    """[R] whether each response token was written by the model."""
    return [r == "m" for r in self.roles]

  def to_json(self) -> dict:
    """The object of its JSONL line (field order kept; None fields left out)."""
    return {f.name: v for f in dataclasses.fields(self)
            if (v := getattr(self, f.name)) is not None}

  @classmethod
  def from_json(cls, obj: dict, where: str = "D_train") -> "TrainRecord":
    """The record of a JSONL object; a missing, unknown or ill-typed field is a DataError naming
    `where` (file:line) and the field."""
    unknown = sorted(set(obj) - set(_CHECKS))
    if unknown:
      raise DataError(f"{where}: unknown field {unknown[0]!r}")
    kwargs = {}
    for f in dataclasses.fields(cls):
      if f.name not in obj:
        if f.default is dataclasses.MISSING:
          raise DataError(f"{where}: missing field {f.name!r}")
        continue
      value = obj[f.name]
      ok, optional = _CHECKS[f.name]
      if not (value is None and optional or ok(value)):
        raise DataError(f"{where}: field {f.name!r}: not a {_TYPES[f.name]} ({_short(value)})")
      kwargs[f.name] = value
    try:
      return cls(**kwargs)
    except DataError as e:
      raise DataError(f"{where}: field {e}") from None


def _short(value) -> str:
  text = repr(value)
  return text if len(text) <= 40 else text[:37] + "..."


def _is_int(x) -> bool:
  return type(x) is int


def _is_number(x) -> bool:
  return type(x) in (int, float)


_ELEMENT = {int: _is_int, float: _is_number, str: lambda x: type(x) is str}


def _check(kind):
  """(value check, None allowed) for a field of type `kind`."""
  args = typing.get_args(kind)
  optional = type(None) in args
  if optional:
    kind = next(a for a in args if a is not type(None))
  if typing.get_origin(kind) is tuple:
    each = _ELEMENT[typing.get_args(kind)[0]]
    return (lambda v: type(v) in (list, tuple) and all(map(each, v))), optional
  return _ELEMENT[kind], optional


_HINTS = typing.get_type_hints(TrainRecord)
_CHECKS = {name: _check(kind) for name, kind in _HINTS.items()}
_TYPES = {name: str(kind).replace("typing.", "") for name, kind in _HINTS.items()}


def append_records(path: str, records: Iterable[TrainRecord]) -> None:
  """Appends records to a D_train file (the JSONL store: whole lines, fsynced)."""
  JsonlStore(path).append(r.to_json() for r in records)


def write_records(path: str, records: Iterable[TrainRecord]) -> None:
  """A whole D_train file, atomically (written under a temporary name and renamed)."""
  write_jsonl(path, (r.to_json() for r in records))


def read_records(path: str, strict: bool = False) -> list[TrainRecord]:
  """The records of a D_train file; a malformed or incomplete line is a DataError naming the
  file, the line and the field. A torn last line (a crash while appending) is skipped, or with
  `strict` (a finished E-step's file) an error as well."""
  return [TrainRecord.from_json(obj, f"{path}:{n}")
          for n, obj in JsonlStore(path).lines(strict)]


def read_dtrain(out_dir: str) -> list[TrainRecord]:
  """D_train of an iteration whose E-step has finished: every host's shard (dtrain*.jsonl), in
  name order; a torn line is an error here (a record would be lost without it)."""
  return [r for path in shard_paths(out_dir, "dtrain") for r in read_records(path, strict=True)]


def in_query_order(records: Sequence[TrainRecord], queries: Sequence) -> list[TrainRecord]:
  """`records` (D_train read from the hosts' shards) ordered by their query's position in the
  iteration's `queries`, each query's records in the order written: the order one host writes,
  so that the M-step's batches do not depend on how many hosts shared the E-step."""
  position: dict = {}
  for i, q in enumerate(queries):
    position.setdefault(q.id, i)
  return sorted(records, key=lambda r: position[r.query_id])
