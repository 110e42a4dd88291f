"""The synthetic task: deterministic under a seed, and its answers right by the grader and by
running the reference code in the sandbox; the trap families' code solutions are wrong."""

import collections

import pytest

from autocode_jax.grading.grader import grade_batch
from autocode_jax.grading.pool import GraderPool
from autocode_jax.interpreter import Sandbox
from autocode_jax.synthetic import FAMILIES, WINNER, generate
from autocode_jax.rollout.tool_loop import code_cells


@pytest.fixture(scope="module")
def problems():
  return generate(100, seed=3)


def test_deterministic_under_a_seed(problems):
  assert generate(100, seed=3) == problems
  assert generate(40, seed=3) == problems[:40]  # a prefix is the shorter list
  other = generate(100, seed=4)
  assert [p.question for p in other] != [p.question for p in problems]
  assert collections.Counter(p.family for p in problems) == {f: 20 for f in FAMILIES}
  assert len({p.id for p in problems}) == 100
  with pytest.raises(ValueError, match="unknown families"):
    generate(3, families=("nope",))


def test_answers_are_right_by_the_grader_and_by_the_reference_code(problems):
  with GraderPool(num_workers=2) as pool:
    plain_ok = grade_batch([p.plain for p in problems], [p.answer for p in problems],
                           "synthetic", pool=pool)
    code_ok = grade_batch([p.code for p in problems], [p.answer for p in problems],
                          "synthetic", pool=pool)
  assert all(plain_ok)
  for p, ok in zip(problems, code_ok):  # trap code is wrong, all other code is right
    assert ok == (WINNER[p.family] != "plain"), (p.family, p.code)
  with Sandbox(num_workers=2, timeout_s=5.0) as sb:
    ref = sb.run_batch([[p.reference_code] for p in problems])
    shown = sb.run_batch([code_cells(p.code) for p in problems])
  for p, r, s in zip(problems, ref, shown):
    assert r.status == "ok" and r.output.strip() == p.answer, (p.id, r)
    # The output block of each code solution is what its code really prints.
    assert s.status == "ok" and f"```output\n{s.output.strip()}\n```" in p.code
