"""The warm-start corpus of the synthetic task. Each problem appears twice:
- under the plain (`auto`) prompt, answered with code with probability `code_share` and in plain
  text otherwise, whatever the problem: the undecided start of Fig. 6. With a low share the
  model defaults to plain reasoning, as base models do unless prompted (the paper's Fig. 1);
- under the `cot` or the `code` prompt with the matching solution, so that it follows the mode
  instructions.
Every `auto` code answer opens with the code-probe prefix P, and no plain answer does: the
model's unprompted code decision is then the decision the M-step's decision term scores
(pi(P | x)), and P, whether the model writes it or the probe appends it, leads to code.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from autocode_jax.data.prompts import CODE_PREFIX, build_prompt
from autocode_jax.data.records import SftExample
from autocode_jax.data.records import Query
from autocode_jax.data.synthetic.task import TRAIN, Problem, split_problems


def warm_start_examples(problems: Sequence[Problem], seed: int, *,
                        code_share: float) -> list[SftExample]:
  """Two examples per problem (see the module docstring); `code_share` is
  RunConfig.corpus_code_share."""
  if not 0 <= code_share <= 1:
    raise ValueError(f"code_share={code_share}: must be in [0, 1]")
  out = []
  for i, p in enumerate(problems):
    rng = np.random.default_rng([seed, i, 17])
    q = p.query()
    if rng.random() < code_share:
      out.append(SftExample(q, p.code, "auto", CODE_PREFIX))
    else:
      out.append(SftExample(q, p.plain, "auto"))
    out.append(SftExample(q, p.code, "code") if i % 2 else SftExample(q, p.plain, "cot"))
  return out


def corpus(queries: Sequence[Query], n: int, task_seed: int, seed: int,
           code_share: float) -> list[SftExample]:
  """The warm-start examples of training `queries` (drawn from the first n problems of the
  train split under task_seed): the SFT corpus the dataset registry serves (data.sft_examples)."""
  by_id = {p.id: p for p in split_problems(n, task_seed, TRAIN)}
  return warm_start_examples([by_id[q.id] for q in queries], seed=seed, code_share=code_share)


def tokenizer_texts(problems: Sequence[Problem]) -> list[str]:
  """The texts the task's tokenizer is trained on: prompts in every mode, both solutions."""
  texts = []
  for p in problems:
    texts += [build_prompt(p.question, m, "vanilla", "plain").text for m in ("auto", "cot", "code")]
    texts += [p.plain, p.code]
  return texts + [CODE_PREFIX]
