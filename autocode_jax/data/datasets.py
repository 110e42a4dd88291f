"""The dataset registry: the six benchmarks and the MATH / GSM8K train sets, read from a
directory of jsonl files laid out like `shared/data` with schema checks whose errors name file,
line and field; and the generated task of the CPU default (`synthetic`, data/synthetic), made
by code. Registering a dataset here (its queries, gold and grading rules, and where it has one
its SFT corpus) is all the training loop and evaluation need: they ask `sample_queries` and
`sft_examples` by name."""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Callable

from autocode_jax.data import synthetic
from autocode_jax.data.records import Query, SftExample
from autocode_jax.data.sampling import stratified_sample
from autocode_jax.files import DataError, json_object
from autocode_jax.grading.extract import normalize_gold


@dataclasses.dataclass(frozen=True)
class _Spec:
  path: str                       # relative to the data directory
  fields: dict[str, tuple]        # required field -> accepted types
  problem: Callable[[dict], str]
  ident: Callable[[dict, int], str]
  level: Callable[[dict], int | None] = lambda r: None
  gold_as: str = ""               # normalize_gold's dataset name, default: the dataset's
  solution: Callable[[dict], str | None] = lambda r: None


@dataclasses.dataclass(frozen=True)
class _Generated:
  """A dataset made by code, nothing on disk (`path` empty): make(n, split, task_seed) -> the
  first n queries of a split ("train" or "eval", disjoint); corpus(queries, n, task_seed, seed,
  code_share) -> the SFT examples of training queries drawn from the first n."""
  make: Callable[[int, str, int], list[Query]]
  corpus: Callable[..., list[SftExample]] | None = None
  path: str = ""
  gold_as: str = ""               # grading rules: the dataset's own


def _math_level(value) -> int | None:
  if isinstance(value, int):
    return value
  m = re.fullmatch(r"Level (\d)", str(value))
  return int(m.group(1)) if m else None  # MATH train has two "Level ?" problems


def _gsm8k_solution(r: dict) -> str:
  """GSM8K's worked answer without its calculator annotations, "#### X" as a boxed answer."""
  body, _, final = r["answer"].rpartition("####")
  body = re.sub(r"<<[^>]*>>", "", body).strip()
  return f"{body}\nThe answer is $\\boxed{{{final.strip().replace(',', '')}}}$."


def _olympiad_problem(r: dict) -> str:
  return f"{r['context']}\n\n{r['question']}" if r.get("context") else r["question"]


DATASETS: dict[str, _Spec | _Generated] = {
    "gsm8k": _Spec("gsm8k/test.jsonl", {"question": (str,), "answer": (str,)},
                   lambda r: r["question"], lambda r, i: f"gsm8k/test/{r.get('idx', i)}"),
    "math500": _Spec("math500/test.jsonl",
                     {"problem": (str,), "answer": (str,), "level": (int,), "unique_id": (str,)},
                     lambda r: r["problem"], lambda r, i: f"math500/{r['unique_id']}",
                     lambda r: _math_level(r["level"])),
    "gaokao2023en": _Spec("gaokao2023en/test.jsonl", {"question": (str,), "answer": (str,)},
                          lambda r: r["question"], lambda r, i: f"gaokao2023en/{i}"),
    "olympiadbench": _Spec("olympiadbench/test.jsonl",
                           {"id": (int,), "question": (str,), "final_answer": (list,)},
                           _olympiad_problem, lambda r, i: f"olympiadbench/{r['id']}"),
    "aime24": _Spec("aime24/test.jsonl", {"id": (int,), "problem": (str,), "answer": (str, int)},
                    lambda r: r["problem"], lambda r, i: f"aime24/{r['id']}"),
    "amc23": _Spec("amc23/test.jsonl", {"id": (int,), "problem": (str,), "answer": (int, float)},
                   lambda r: r["problem"], lambda r, i: f"amc23/{r['id']}"),
    "math_train": _Spec("math_train/train.jsonl",
                        {"problem": (str,), "solution": (str,), "level": (str,),
                         "unique_id": (str,)},
                        lambda r: r["problem"], lambda r, i: f"math/{r['unique_id']}",
                        lambda r: _math_level(r["level"]), solution=lambda r: r["solution"]),
    "gsm8k_train": _Spec("gsm8k/train.jsonl", {"question": (str,), "answer": (str,)},
                         lambda r: r["question"], lambda r, i: f"gsm8k/train/{i}",
                         gold_as="gsm8k", solution=_gsm8k_solution),
    synthetic.SOURCE: _Generated(synthetic.queries, synthetic.corpus),
}
BENCHMARKS = ("gsm8k", "math500", "gaokao2023en", "olympiadbench", "aime24", "amc23")
TRAIN_SETS = ("math_train", "gsm8k_train")


def _published_lines(path: str) -> list[tuple[int, dict]]:
  """(1-based line number, object) of every non-blank line of a published file (its last line
  may lack a newline, unlike files.JsonlStore's torn line); errors name file and line."""
  if not os.path.isfile(path):
    raise DataError(f"{path}: no such file")
  out = []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if line.strip():  # a published file: its last line may lack a newline, none is torn
        out.append((lineno, json_object(line, path, lineno)))
  return out


def load_dataset(name: str, data_dir: str, *, raw_gold: bool = False) -> list[Query]:
  """The queries of dataset `name` (one of DATASETS, read from disk) from `data_dir`/<its
  path>."""
  spec = _spec(name)
  if isinstance(spec, _Generated):
    raise DataError(f"{name} is generated, not read: use sample_queries with a count")
  path = os.path.join(data_dir, spec.path)
  queries, seen = [], set()
  for index, (lineno, rec) in enumerate(_published_lines(path)):
    where = f"{path}:{lineno}"
    for field, types in spec.fields.items():
      if field not in rec:
        raise DataError(f"{where}: missing field {field!r}")
      if not isinstance(rec[field], types) or isinstance(rec[field], bool):
        raise DataError(f"{where}: field {field!r}: expected "
                        f"{' or '.join(t.__name__ for t in types)}, got {type(rec[field]).__name__}")
    try:
      gold = normalize_gold(spec.gold_as or name, rec)
    except (KeyError, ValueError) as e:
      raise DataError(f"{where}: {e}") from None
    qid = spec.ident(rec, index)
    if qid in seen:
      raise DataError(f"{where}: duplicate id {qid!r}")
    seen.add(qid)
    queries.append(Query(id=qid, problem=spec.problem(rec), gold=gold, level=spec.level(rec),
                         source=name, solution=spec.solution(rec)))
  return queries


def _spec(name: str) -> _Spec | _Generated:
  if name not in DATASETS:
    raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
  return DATASETS[name]


def is_generated(name: str) -> bool:
  return isinstance(_spec(name), _Generated)


def sample_queries(name: str, data_dir: str, n: int, *, split: str = "train", seed: int = 0,
                   task_seed: int = 0, at_most: bool = False) -> list[Query]:
  """n queries of a dataset. Read from disk: all of them (n = 0), or a sample stratified by
  level, a deterministic function of `seed`. Generated: the first n of the split ("train" or
  "eval") under `task_seed`; n must be given. ValueError when n cannot be served; with
  at_most, more than a read dataset holds gives all of it."""
  spec = _spec(name)
  if isinstance(spec, _Generated):
    if n <= 0:
      raise ValueError(f"{name} is generated: give the number of queries")
    return spec.make(n, split, task_seed)
  pool = load_dataset(name, data_dir)
  n = n or len(pool)
  if at_most:
    n = min(n, len(pool))
  if n > len(pool):
    raise ValueError(f"{n} > the {len(pool)} queries of {name}")
  return stratified_sample(pool, n, seed=seed) if n < len(pool) else pool


def grading_rules(source: str) -> str:
  """The extraction rules a query's answers are graded under: its dataset's (gsm8k_train grades
  as gsm8k); a source outside the registry, its own name."""
  return DATASETS[source].gold_as or source if source in DATASETS else source


def sft_examples(name: str, queries: list[Query], *, n: int = 0, task_seed: int = 0,
                 seed: int = 0, code_share: float = 0.0) -> list[SftExample]:
  """The SFT examples of `queries` of dataset `name`: their given solutions (under the plain
  prompt), or a generated dataset's corpus (its first n training problems under task_seed,
  drawn with `seed`; `code_share`: the share of plain-prompt answers that use code)."""
  spec = _spec(name)
  if isinstance(spec, _Generated):
    if spec.corpus is None:
      raise ValueError(f"{name} has no SFT corpus")
    return spec.corpus(queries, n, task_seed, seed, code_share)
  return [SftExample(q, q.solution or "") for q in queries]
