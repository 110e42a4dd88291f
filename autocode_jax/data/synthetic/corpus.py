"""The warm-start corpus of the synthetic task. Each problem appears twice:
- under the plain (`auto`) prompt, answered with code with probability `code_share` and in plain
  text otherwise, whatever the problem: the undecided start of Fig. 6. With a low share the
  model defaults to plain reasoning, as base models do unless prompted (the paper's Fig. 1);
- with a solution it is told how to write: the `cot` prompt and the plain solution (half the
  problems), the `code` prompt and the code (a quarter), or the plain prompt followed by the
  code-probe prefix P, given as context and not learnt, and the code (a quarter), so that it
  follows the mode instructions and writes code after P, whoever wrote P, as well as under the
  `code` prompt.
Every `auto` code answer opens with P, and no plain answer does: the model's unprompted code
decision is then the decision the M-step's decision term scores (pi(P | x)). Why the given P
(issue 36): with code after P learnt only in the `code_share` of plain-prompt answers that use
code, the warm start's code after P was a weaker skill than under the `code` prompt (at seeds
1 and 2, its `modpow` code copied the question's numbers right on 22.5% and 0% of unseen
problems after P, against 90% and 82.5% under the `code` prompt), which a base model's coding
skill is not, and EM's code_prefix probe found little working code to learn from.
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
    if i % 2 == 0:
      out.append(SftExample(q, p.plain, "cot"))
    elif i % 4 == 1:
      out.append(SftExample(q, p.code, "code"))
    else:  # the code_prefix probe's context: P given (not learnt), then the code
      out.append(SftExample(q, p.code, "auto", CODE_PREFIX, prefix_given=True))
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
