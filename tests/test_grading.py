"""The grader: extraction, gold normalisation, equivalence cases, time limits, shipped golds."""

import time

import pytest

from autocode_jax.data import BENCHMARKS, load_dataset
from autocode_jax.grading import (GraderPool, extract_answer, failure_counts, grade, grade_batch,
                                  grade_results, last_boxed, normalize_gold)

# (prediction, gold, expected): the prediction is the extracted answer.
CASES = [
    # integers, thousands separators, signs
    ("42", "42", True),
    ("1,000", "1000", True),
    ("1{,}000", "1000", True),
    ("1000000", "1,000,000", True),
    ("11111111100", "11,\\! 111,\\! 111,\\! 100", True),
    ("16386.20", "\\$16,\\!386.20", True),
    ("16386.2", "\\$16,\\!386.20", True),
    ("12\\,345", "12345", True),
    ("12\u2009345", "12345", True),
    ("1{,}008{,}016", "1008016", True),
    ("(1,000)", "1000", False),
    ("1,\\!001", "1000", False),
    ("-7", "-7", True),
    ("7", "-7", False),
    ("43", "42", False),
    # fractions and decimals
    ("\\frac{1}{2}", "0.5", True),
    ("\\dfrac{3}{4}", "\\frac34", True),
    ("0.75", "\\frac{3}{4}", True),
    ("\\frac{2}{4}", "\\frac{1}{2}", True),
    ("\\frac{1}{3}", "\\frac{1}{2}", False),
    ("27.0", "27", True),
    (".5", "\\frac{1}{2}", True),
    ("137.5", "137 \\frac{1}{2}", True),
    ("68.5", "137 \\frac{1}{2}", False),
    # exact comparison where float tolerance would lie
    ("\\frac{1}{2^{98}}", "\\frac{1}{2^{99}}", False),
    ("\\frac{1}{2^{99}}", "\\frac{1}{2^{99}}", True),
    ("2^{-99}", "\\frac{1}{2^{99}}", True),
    ("\\frac{1}{2004!}", "\\frac{1}{2006!}", False),
    ("\\frac{1}{2006!}", "\\frac{1}{2006!}", True),
    ("1-\\frac{1}{e}", "1+\\frac{1}{e}", False),
    ("1+e^{-1}", "1+\\frac{1}{e}", True),
    ("10^{-12}", "10^{-13}", False),
    (".0000673", ".0000672", False),
    ("-\\frac{1}{2^{98}}", "\\frac{1}{2^{98}}", False),
    ("\\frac{5}{4}", "1.25", True),
    ("1.26", "1.25", False),
    # radicals and pi
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", True),
    ("2\\sqrt{3}", "\\sqrt{12}", True),
    ("\\sqrt{3}", "\\sqrt{2}", False),
    ("8\\pi", "8 \\pi", True),
    ("4\\pi", "8\\pi", False),
    # percentages
    ("25\\%", "25", True),
    ("25", "25\\%", True),
    ("30\\%", "25\\%", False),
    # degrees
    ("30^\\circ", "30", True),
    ("30^{\\circ}", "30", True),
    ("45", "30^\\circ", False),
    # units in \text{}
    ("5\\text{ cm}", "5", True),
    ("12 \\text{ dollars}", "12", True),
    ("\\$18", "18", True),
    ("18\\text{ meters}", "17", False),
    ("9", "9\\text{ values}", True),
    ("22.1", "22.1cm^{2}", True),
    # units in every text command, and after the gold's math
    ("40\\textnormal{ cm}", "40 cm", True),
    ("40\\textrm{ cm}", "40", True),
    ("40\\textup{ cm}", "40 cm", True),
    ("40\\mbox{ cm}", "40", True),
    ("40\\operatorname{cm}", "40", True),
    ("40\\mathrm{~cm}", "40", True),
    ("41\\textnormal{ cm}", "40 cm", False),
    ("40\\text{ cm}", "$40$ cm", True),
    ("40", "$40$ cm", True),
    ("40\\textnormal{ cm}", "$40$ \\text{cm}", True),
    ("41", "$40$ cm", False),
    ("12", "$12$ cm$^2$", False),
    ("12 s", "12", True),
    ("s \\cdot 2", "2s", True),
    ("2", "2s", False),
    ("12 + 10t", "10t + 12", True),
    ("c + b + a", "a + b + c", True),
    # numbers in a base
    ("52_8", "52_8", True),
    ("52", "52_8", True),
    ("52_9", "52_8", False),
    ("28_8", "28_9", False),
    ("42", "52_8", False),
    ("-37_9", "-37_8", False),
    # intervals
    ("[1,2)", "[1,2)", True),
    ("(1,2)", "[1,2)", False),
    ("[1,2]", "[1,2)", False),
    ("(-\\infty, 3]", "(-\\infty,3]", True),
    ("(0,9) \\cup (9,36)", "(0,9)\\cup(9,36)", True),
    ("(0,9] \\cup (9,36)", "(0,9)\\cup(9,36)", False),
    # sets and tuples
    ("\\{1,2\\}", "\\{2,1\\}", True),
    ("\\{1,3\\}", "\\{1,2\\}", False),
    ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("(1,-16,-4,43)", "(1,-16,-4,43)", True),
    ("(1,-16,-4,42)", "(1,-16,-4,43)", False),
    ("(2, 1)", "(1, 2)", False),
    ("\\{1, 2, 4\\}", "\\{1,2\\}", False),
    ("6 - i \\cdot 5", "6 - 5i", True),
    ("\\frac{\\pi}{2} + 2007", "2007 + \\frac\\pi 2", True),
    ("-2007 + \\frac\\pi 2", "2007 + \\frac\\pi 2", False),
    # matrices
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", True),
    ("\\begin{pmatrix} 1 & 0 \\\\ 0 & 1 \\end{pmatrix}", "\\begin{pmatrix}1&0\\\\0&1\\end{pmatrix}", True),
    ("\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", False),
    # equations and inequalities
    ("x=5", "5", True),
    ("y = 2x + 3", "y=2x+3", True),
    ("y = 2x + 4", "y=2x+3", False),
    ("x > 2", "(2, \\infty)", True),
    ("x \\geq 2", "x\\ge 2", True),
    # expressions
    ("x^2+2x+1", "(x+1)^2", True),
    ("x^5 - x^4 + x^3 - x^2 + x - 1", "x^5-x^4+x^3-x^2+x-1", True),
    ("x^2-1", "x^2+1", False),
    # undefined values of the same form are not equal (5:00 parses as 5/0)
    ("-05\\!:\\!00", "05\\!:\\!00", False),
    ("05\\!:\\!00", "05\\!:\\!00", True),
    # nested radicals, fractions and powers with operands reordered at depth 2-3
    ("\\frac{\\sqrt{\\sqrt{3}+\\sqrt{2}}}{7+3\\sqrt{5}}",
     "\\frac{\\sqrt{\\sqrt{2}+\\sqrt{3}}}{3\\sqrt{5}+7}", True),
    ("\\frac{\\sqrt{\\sqrt{3}+\\sqrt{2}}}{7+3\\sqrt{6}}",
     "\\frac{\\sqrt{\\sqrt{2}+\\sqrt{3}}}{3\\sqrt{5}+7}", False),
    ("11 + \\sqrt{\\sqrt{\\sqrt{6} \\cdot 19 + 10} + 5}", "\\sqrt{5+\\sqrt{10+19\\sqrt{6}}}+11", True),
    ("11 + \\sqrt{\\sqrt{\\sqrt{7} \\cdot 19 + 10} + 5}", "\\sqrt{5+\\sqrt{10+19\\sqrt{6}}}+11", False),
    ("(\\sqrt{7} + 3)^{y + x}", "(3+\\sqrt{7})^{x+y}", True),
    # several answers
    ("2, 3", "3, 2", True),
    ("3 \\pm 2\\sqrt{2}", "3 \\pm 2 \\sqrt{2}", True),
    ("-2, 0, 2", "-2,0,2", True),
    ("-2, 2", "-2,0,2", False),
    # multiple choice
    ("C", "C", True),
    ("(C)", "C", True),
    ("\\text{(C)}", "C", True),
    ("\\textbf{(B)}", "B", True),
    ("B", "C", False),
    ("c", "C", False),
    # text answers
    ("\\text{Evelyn}", "\\text{Evelyn}", True),
    ("Evelyn", "\\text{Evelyn}", True),
    ("Bob", "\\text{Evelyn}", False),
]


@pytest.fixture(scope="module")
def pool():
  with GraderPool(num_workers=2, timeout_s=10) as p:
    yield p


def test_enough_cases():
  assert len(CASES) >= 60


def test_equivalence_cases(pool):
  got = grade_batch([f"Thus \\boxed{{{p}}}." for p, _, _ in CASES], [g for _, g, _ in CASES],
                    pool=pool, timeout_s=10)
  wrong = [(p, g, want) for (p, g, want), ok in zip(CASES, got) if ok != want]
  assert wrong == []


@pytest.mark.parametrize("response, dataset, expected", [
    ("so \\boxed{\\frac{1}{2}} and finally \\boxed{\\frac{\\sqrt{3}}{\\{2\\}}}", None,
     "\\frac{\\sqrt{3}}{\\{2\\}}"),
    ("\\fbox{12}", None, "12"),
    ("it is \\boxed 7.", None, "7."),
    ("\\boxed{\\{1, 2\\}}", None, "\\{1, 2\\}"),
    ("unbalanced \\boxed{3 and the answer is 4.", None, "4"),
    ("So the final answer is: $\\frac{3}{4}$. Done", None, "\\frac{3}{4}"),
    ("The answer is 27 apples.\nok", None, "27 apples"),
    ("She has 3 apples, then 1,250 pears.", "gsm8k", "1250"),
    ("She has 3 apples, then 1,250 pears.", None, None),
    ("nothing here", "gsm8k", None),
])
def test_extract_answer(response, dataset, expected):
  assert extract_answer(response, dataset) == expected


@pytest.mark.parametrize("dataset, record, gold", [
    ("gsm8k", {"answer": "so 2+2 = <<2+2=4>>4\n#### 1,234"}, "1234"),
    ("olympiadbench", {"final_answer": ["$69$,$84$"]}, "69, 84"),
    ("olympiadbench", {"final_answer": ["$(1,1), (3,2)$"]}, "(1,1), (3,2)"),
    ("amc23", {"answer": 27.0}, "27"),
    ("amc23", {"answer": 2.5}, "2.5"),
    ("aime24", {"answer": "033"}, "033"),
    ("math_train", {"solution": "thus $\\boxed{\\frac{1}{2}}$."}, "\\frac{1}{2}"),
    ("gaokao2023en", {"answer": "$145$solution:"}, "145"),
    ("gaokao2023en", {"answer": "B"}, "B"),
])
def test_normalize_gold(dataset, record, gold):
  assert normalize_gold(dataset, record) == gold


def test_normalize_gold_names_the_field():
  with pytest.raises(ValueError, match="'answer' has no '####'"):
    normalize_gold("gsm8k", {"answer": "42"})
  with pytest.raises(KeyError, match="final_answer"):
    normalize_gold("olympiadbench", {})


def test_last_boxed_handles_nesting():
  assert last_boxed("\\boxed{\\frac{a}{b^{2}}}") == "\\frac{a}{b^{2}}"
  assert last_boxed("no box") is None


# Right answers equal to their gold up to the order of commutative operands at depth 2-3, and
# near misses of them: decided without the symbolic check, so within a second each.
REORDERED = [
    ("\\frac{\\sqrt{\\sqrt{%d}+\\sqrt{%d}}}{%d\\sqrt{%d}+%d}",
     "\\frac{\\sqrt{\\sqrt{%(1)d}+\\sqrt{%(0)d}}}{%(4)d+\\sqrt{%(3)d} \\cdot %(2)d}"),
    ("\\sqrt{%d+\\sqrt{%d+%d\\sqrt{%d}}}+%d",
     "%(4)d+\\sqrt{\\sqrt{\\sqrt{%(3)d} \\cdot %(2)d+%(1)d}+%(0)d}"),
    ("(%d+\\sqrt{%d})^{%d+\\sqrt{%d}} \\cdot %d",
     "%(4)d (\\sqrt{%(1)d}+%(0)d)^{\\sqrt{%(3)d}+%(2)d}"),
]


def test_reordered_nested_answers_do_not_depend_on_the_time_limit(pool):
  """The issue's shapes, with numbers larger than the ones that took 3.8 s to grade: right at a
  one-second limit, each in well under it, and a near miss (one inner number changed) is wrong."""
  responses, golds, expected = [], [], []
  for k, (gold, answer) in enumerate(REORDERED):
    for n in range(4):
      p = [17 + 10 * n + k, 23 + 7 * n, 31 + n, 41 + 3 * n, 53 + n]
      g = gold % tuple(p)
      for change, want in ((0, True), (1, False)):
        q = {str(i): v for i, v in enumerate(p)}
        q["3"] += change
        responses.append(f"So \\boxed{{{answer % q}}}.")
        golds.append(g)
        expected.append(want)
  results = grade_results(responses, golds, pool=pool, timeout_s=1)
  assert [r.failure for r in results] == [None] * len(results)
  assert [r.correct for r in results] == expected
  assert max(r.seconds for r in results) < 0.5


def test_canonical_key_is_commutative_reordering_only():
  """Equal keys exactly for the same expression up to the order and grouping of sums' and
  products' operands (and of a finite set's elements); never for other rewrites."""
  import sympy
  from autocode_jax.grading.equivalence import canonical_key
  x, y, z = sympy.symbols("x y z")
  ne = dict(evaluate=False)
  a = sympy.Add(sympy.Mul(3, sympy.sqrt(5, evaluate=False), **ne), 7, **ne)
  b = sympy.Add(7, sympy.Mul(sympy.sqrt(5, evaluate=False), 3, **ne), **ne)
  assert a != b and canonical_key(a) == canonical_key(b)
  nested = sympy.Add(x, sympy.Add(y, z, **ne), **ne)
  assert canonical_key(nested) == canonical_key(sympy.Add(sympy.Add(z, x, **ne), y, **ne))
  assert canonical_key(sympy.Pow(x, y, **ne)) != canonical_key(sympy.Pow(y, x, **ne))
  assert canonical_key(sympy.Tuple(1, 2)) != canonical_key(sympy.Tuple(2, 1))
  assert canonical_key(sympy.FiniteSet(1, 2)) == canonical_key(sympy.FiniteSet(2, 1))
  assert canonical_key(sympy.Add(x, x, **ne)) != canonical_key(sympy.Mul(2, x, **ne))
  A, B = sympy.symbols("A B", commutative=False)
  assert canonical_key(A * B) != canonical_key(B * A)
  huge = sympy.Pow(10, sympy.Pow(10, 10, **ne), **ne)  # never evaluated
  assert canonical_key(sympy.Add(huge, 1, **ne)) == canonical_key(sympy.Add(1, huge, **ne))


def test_no_answer_grades_false(pool):
  assert grade("I give up.", "3", pool=pool) is False


def test_grade_batch_checks_lengths(pool):
  with pytest.raises(ValueError, match="2 responses but 1 golds"):
    grade_batch(["a", "b"], ["1"], pool=pool)


@pytest.mark.parametrize("pred, gold", [
    ("10^{10^{10}} + 1", "10^{10^{10}}"),
    ("(" * 10_000 + "1" + ")" * 10_000, "1"),
    ("{" * 10_000 + "1" + "}" * 10_000, "1"),
    ("\\frac{1}{" * 3000 + "2" + "}" * 3000, "\\frac{1}{2}"),
], ids=["tower", "parens", "braces", "fractions"])
def test_hostile_answers_cost_at_most_the_timeout(pool, pred, gold):
  start = time.monotonic()
  ok = grade(f"\\boxed{{{pred}}}", gold, pool=pool, timeout_s=2)
  elapsed = time.monotonic() - start
  assert ok is False
  assert elapsed < 2 + 1.5  # the limit plus scheduling slack
  assert grade("\\boxed{2}", "2", pool=pool) is True  # the pool still answers


def test_timeout_kills_and_replaces_the_worker(pool):
  kills = pool.kills
  nested = "{" * 10_000 + "1" + "}" * 10_000  # takes the parser far longer than 0.5 s
  ok, why = pool.call("equivalent", "1", nested, 5, timeout_s=0.5)
  assert (ok, why) == (False, "timeout")
  assert pool.kills == kills + 1
  assert pool.call("equivalent", "2", "2")[1] is True


def test_default_pool_grade():
  assert grade("The answer is $\\boxed{\\frac{6}{8}}$", "0.75") is True
  assert grade("\\boxed{3}", "4") is False


# Golds that math-verify cannot parse into a mathematical object: upstream data quirks,
# listed here so that a new failure is noticed. They are still graded, by normalised string.
KNOWN_QUIRKS = {
    ("gaokao2023en", 167): "empty answer; it is embedded in the question (HMMT2023General_9)",
    ("gaokao2023en", 192): "empty answer; it is embedded in the question (052023SATS4_11)",
    ("olympiadbench", 34): "'m_{\\max }=n^{2}-n-1': \\max in a subscript is not parsed",
    ("olympiadbench", 96): "'t(0,4]': a stray 't' before the interval",
}


def test_every_shipped_gold_parses(shared_dir, pool):
  """Every benchmark gold normalises to something math-verify parses into a sympy object, and
  grades equal to itself, except the listed data quirks."""
  failures = {}
  for name in BENCHMARKS:
    queries = load_dataset(name, str(shared_dir / "data"))
    parsed = pool.map("parses", [(q.gold,) for q in queries])
    same = grade_batch([f"\\boxed{{{q.gold}}}" for q in queries], [q.gold for q in queries],
                       pool=pool)
    for i, (q, (ok, value), self_equal) in enumerate(zip(queries, parsed, same)):
      if not (ok and value) or not self_equal:
        failures[(name, i)] = q.gold
  assert set(failures) == set(KNOWN_QUIRKS), failures


def test_grade_results_say_why_a_response_scored_zero(pool):
  """No answer, a wrong one, a timeout and a worker exception all grade False; the results
  tell them apart and failure_counts counts the last two."""
  results = grade_results(["no answer here", "\\boxed{2}", "\\boxed{10^{10^{10^{10}}}}",
                           "\\boxed{1}"], ["1", "1", "1", None], pool=pool, timeout_s=1)
  assert [r.correct for r in results] == [False] * 4
  assert [r.answer for r in results] == [None, "2", "10^{10^{10^{10}}}", "1"]
  assert [r.failure_kind for r in results] == [None, None, "timeout", "error"]
  assert "AttributeError" in results[3].failure
  assert failure_counts(r.failure_kind for r in results) == {"timeout": 1, "error": 1}
