"""Evaluation metrics against values computed by hand."""

import pytest

from autocode_jax.grading.metrics import autocode_analysis, invocation_histogram, pass_at_1


def _rows(table):
  """table: (query, mode, [(correct, label), ...])."""
  return [{"query_id": q, "mode": m, "correct": c, "label": l}
          for q, m, samples in table for c, l in samples]


# Four queries, greedy (one sample per mode):
#   a: cot right, code wrong  -> auto chose plain (label 0): a right pick
#   b: cot wrong, code right  -> auto chose code: right pick
#   c: cot wrong, code right  -> auto chose plain: wrong pick
#   d: both right             -> not a selection query
GREEDY = _rows([
    ("a", "cot", [(1, 0)]), ("a", "code", [(0, 1)]), ("a", "auto", [(1, 0)]),
    ("b", "cot", [(0, 0)]), ("b", "code", [(1, 1)]), ("b", "auto", [(1, 1)]),
    ("c", "cot", [(0, 0)]), ("c", "code", [(1, 1)]), ("c", "auto", [(0, 0)]),
    ("d", "cot", [(1, 0)]), ("d", "code", [(1, 1)]), ("d", "auto", [(1, 1)]),
])


def test_greedy_analysis_by_hand():
  a = autocode_analysis(GREEDY, bins=2)
  assert a["accuracy"] == {"auto": 0.75, "code": 0.75, "cot": 0.5}
  assert a["code_rate"] == {"auto": 0.5, "code": 1.0, "cot": 0.0}
  assert a["union_bound"] == 1.0  # every query is solved by one mode or the other
  assert a["selection_queries"] == 3 and a["selection_accuracy"] == pytest.approx(2 / 3)
  assert a["invocation_hist"] == [2, 2]  # rates 0, 1, 0, 1 -> bins [0, .5) and [.5, 1]
  assert a["queries"] == 4
  # auto used code on b and d, right on both; the code mode is right on both too
  assert a["decided_code_queries"] == 2
  assert a["decided_code_accuracy"] == 1.0 and a["code_mode_accuracy_there"] == 1.0


def test_sampled_pass_at_1_and_selection():
  # n = 4 samples: q1 cot 3/4 right (solved), code 1/4 (not); auto used code in 1 of 4.
  # q2 cot 0/4, code 2/4 (solved at >= 1/2); auto used code in 3 of 4.
  rows = _rows([
      ("q1", "cot", [(1, 0), (1, 0), (1, 0), (0, 0)]),
      ("q1", "code", [(1, 1), (0, 1), (0, 1), (0, 1)]),
      ("q1", "auto", [(1, 0), (1, 0), (0, 1), (1, 0)]),
      ("q2", "cot", [(0, 0)] * 4),
      ("q2", "code", [(1, 1), (0, 1), (1, 1), (0, 1)]),
      ("q2", "auto", [(1, 1), (0, 1), (1, 1), (0, 0)]),
  ])
  assert pass_at_1(rows, "cot") == pytest.approx((0.75 + 0.0) / 2)
  assert pass_at_1(rows, "code") == pytest.approx((0.25 + 0.5) / 2)
  assert pass_at_1(rows, "auto") == pytest.approx((0.75 + 0.5) / 2)
  a = autocode_analysis(rows, bins=4)
  assert a["union_bound"] == 1.0
  # q1's right pick is plain: 3 of 4 auto samples; q2's is code: 3 of 4.
  assert a["selection_accuracy"] == pytest.approx((0.75 + 0.75) / 2)
  assert invocation_histogram(rows, bins=4) == [0, 1, 0, 1]  # rates .25, .75: bins [.25,.5), [.75,1]
  # auto's code samples: q1 one, wrong (0); q2 three, two right (2/3); the code mode there:
  # q1 1/4, q2 2/4
  assert a["decided_code_queries"] == 2
  assert a["decided_code_accuracy"] == pytest.approx((0 + 2 / 3) / 2)
  assert a["code_mode_accuracy_there"] == pytest.approx((0.25 + 0.5) / 2)
  with pytest.raises(ValueError, match="mode 'nope'"):
    pass_at_1(rows, "nope")


def test_no_selection_queries():
  rows = _rows([("a", "cot", [(1, 0)]), ("a", "code", [(1, 1)]), ("a", "auto", [(1, 0)])])
  a = autocode_analysis(rows)
  assert a["selection_queries"] == 0 and a["selection_accuracy"] is None
  assert a["decided_code_queries"] == 0 and a["decided_code_accuracy"] is None
  assert a["code_mode_accuracy_there"] is None
