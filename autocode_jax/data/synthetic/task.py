"""A generated math task small enough for a laptop, built so that the choice between plain
reasoning and code matters (issue: the embedded default).

Families, each with a plain solution and a code solution in the format of METHOD.md:
- plain wins
  - `ceil_div`: "boxes needed" word problems; the natural code (`a // b`) is easy to get wrong:
    it rounds down, and the code solutions of the warm-start corpus make exactly that mistake;
  - `fence_posts`: posts of a fence of n sections; the natural code (`n * 2`, two posts per
    section) counts every shared post twice.
  The numbers are small (30 and 28 distinct problems), so a tiny model learns the plain
  solutions by heart, as a larger one knows such facts.
- code wins
  - `mul5`: the product of two 5-digit numbers (beyond a small model's mental arithmetic);
  - `modpow`: a^e mod m with 2-3 digit numbers.
- both work
  - `add_small`: the sum of two numbers from 1 to 6.

Every problem keeps the correct reference code apart from the solution's code; `generate` is a
deterministic function of (n, seed, families).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from autocode_jax.data.records import Query

WINNER = {"ceil_div": "plain", "fence_posts": "plain", "mul5": "code", "modpow": "code",
          "add_small": "both"}
FAMILIES = tuple(WINNER)
SOURCE = "synthetic"


@dataclasses.dataclass(frozen=True)
class Problem:
  """question, answer (the gold, a decimal integer); plain / code: worked solutions (code:
  ```python ... ``` then ```output ... ```, as a rollout shows them); reference_code: code
  that prints the right answer; winner: which way of solving works (plain | code | both)."""
  id: str
  family: str
  question: str
  answer: str
  plain: str
  code: str
  reference_code: str
  winner: str

  def query(self) -> Query:
    return Query(self.id, self.question, self.answer, None, SOURCE, solution=None)


def _code_solution(code: str, output: str) -> str:
  return (f"Let me compute it.\n```python\n{code}\n```\n```output\n{output}\n```\n"
          f"The answer is \\boxed{{{output}}}.")


def _ceil_div(rng):
  b = int(rng.integers(2, 6))
  q, r = int(rng.integers(1, 4)), int(rng.integers(1, b))  # 30 (a, b) pairs: learnable facts
  a = q * b + r
  question = f"Each box holds {b} eggs. How many boxes are needed to pack {a} eggs?"
  plain = (f"{a} = {q} * {b} + {r}, so {q} boxes are full and {r} eggs need one more box. "
           f"The answer is \\boxed{{{q + 1}}}.")
  trap = f"print({a} // {b})"
  return question, str(q + 1), plain, _code_solution(trap, str(q)), f"print(-(-{a} // {b}))"


def _fence_posts(rng):
  n = int(rng.integers(2, 30))
  question = (f"A straight fence has {n} sections, with a post at each end of every section. "
              f"How many posts are there?")
  plain = (f"Neighbouring sections share a post, so {n} sections need {n} + 1 posts. "
           f"The answer is \\boxed{{{n + 1}}}.")
  trap = f"print({n} * 2)"  # two posts per section, counting the shared ones twice
  return question, str(n + 1), plain, _code_solution(trap, str(2 * n)), f"print({n} + 1)"


def _mul5(rng):
  a, b = (int(x) for x in rng.integers(10000, 100000, size=2))
  question = f"What is {a} * {b}?"
  plain = f"Multiplying, {a} * {b} = {a * b}. The answer is \\boxed{{{a * b}}}."
  code = f"print({a} * {b})"
  return question, str(a * b), plain, _code_solution(code, str(a * b)), code


def _modpow(rng):
  a, e, m = int(rng.integers(10, 1000)), int(rng.integers(10, 1000)), int(rng.integers(10, 1000))
  ans = pow(a, e, m)
  question = f"What is the remainder when {a}^{e} is divided by {m}?"
  plain = f"Reducing {a}^{e} modulo {m} gives {ans}. The answer is \\boxed{{{ans}}}."
  code = f"print(pow({a}, {e}, {m}))"
  return question, str(ans), plain, _code_solution(code, str(ans)), code


def _add_small(rng):
  a, b = int(rng.integers(1, 7)), int(rng.integers(1, 7))
  question = f"What is {a} + {b}?"
  plain = f"{a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}."
  code = f"print({a} + {b})"
  return question, str(a + b), plain, _code_solution(code, str(a + b)), code


_MAKERS: dict[str, Callable] = {"ceil_div": _ceil_div, "fence_posts": _fence_posts, "mul5": _mul5,
                                "modpow": _modpow, "add_small": _add_small}


def generate(n: int, seed: int = 0, families: Sequence[str] = FAMILIES) -> list[Problem]:
  """n problems cycling over `families`; problem i depends on (seed, i, its family) only, so a
  prefix of a longer list is the shorter list."""
  unknown = [f for f in families if f not in _MAKERS]
  if unknown or not families:
    raise ValueError(f"synthetic.generate: unknown families {unknown}; known: {FAMILIES}")
  out = []
  for i in range(n):
    family = families[i % len(families)]
    rng = np.random.default_rng([seed, i, FAMILIES.index(family)])
    question, answer, plain, code, ref = _MAKERS[family](rng)
    out.append(Problem(f"{SOURCE}/{seed}/{i}", family, question, answer, plain, code, ref,
                       WINNER[family]))
  return out


TRAIN, EVAL = 0, 1
SPLITS = {"train": TRAIN, "eval": EVAL}


def split_problems(n: int, task_seed: int, split: int) -> list[Problem]:
  """The first n problems of a run's training (split TRAIN) or evaluation (split EVAL) set under
  its task_seed; the two splits use disjoint generator seeds."""
  return generate(n, seed=2 * task_seed + split)


def queries(n: int, split: str, task_seed: int) -> list[Query]:
  """The queries of the first n problems of a split ("train" or "eval"): what the dataset
  registry serves (data.sample_queries)."""
  return [p.query() for p in split_problems(n, task_seed, SPLITS[split])]
