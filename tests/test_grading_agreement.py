"""The generated agreement suite (grading/agreement.py) on every gold of the six benchmarks:
the project's grader is right on every pair where plain math-verify is right, on math-verify's
false positives, and on the classes it was wrong or slow on before (units in every text
command and after a gold's math; nested radicals and powers with operands reordered), with no
grader failure at the default time limit. benchmarks/grading_bench.py adds the MATH train
golds and the timing figures."""

import collections

import pytest

from autocode_jax.data import load_dataset
from autocode_jax.grading import GraderPool, agreement

DATASETS = ("math500", "gsm8k", "gaokao2023en", "olympiadbench", "aime24", "amc23")

pytestmark = pytest.mark.slow  # the generated agreement suite on every gold

@pytest.fixture(scope="module")
def scored(shared_dir):
  golds = {n: [q.gold for q in load_dataset(n, str(shared_dir / "data"))] for n in DATASETS}
  suite = agreement.build_suite(golds)
  with GraderPool(num_workers=2) as pool:  # the default time limit, 5 s
    return agreement.score(suite, pool)


def test_suite_is_generated_from_every_gold(scored, shared_dir):
  assert len(scored) > 5000
  kinds = collections.Counter(s.pair.kind for s in scored)
  every = ({f"equal/{k}" for k in (*agreement.EQUAL, *agreement.EQUAL_WITH_GOLD)} |
           {f"unequal/{k}" for k in (*agreement.UNEQUAL, *agreement.UNEQUAL_WITH_GOLD)})
  assert set(kinds) == every, every - set(kinds)
  for name in DATASETS:
    golds = [q.gold for q in load_dataset(name, str(shared_dir / "data"))]
    identity = {s.pair.index for s in scored
                if s.pair.dataset == name and s.pair.kind == "equal/identity"}
    assert identity == {i for i, g in enumerate(golds) if g.strip()}  # empty: a data quirk
  assert sum(s.pair.expected for s in scored) > 0 and sum(not s.pair.expected for s in scored) > 0


def test_no_grader_failures(scored):
  failed = [(s.pair, s.ours_failure, s.plain_failure) for s in scored
            if s.ours_failure or s.plain_failure]
  assert failed == []


def test_right_wherever_math_verify_is_right(scored):
  worse = [(s.pair.kind, s.pair.gold, s.pair.response) for s in scored
           if s.plain == s.pair.expected and s.ours != s.pair.expected]
  assert worse == []


def test_right_on_math_verify_false_positives(scored):
  false_positives = [s for s in scored if not s.pair.expected and s.plain]
  assert false_positives, "the suite should hold some of math-verify's false positives"
  wrong = [(s.pair.kind, s.pair.gold, s.pair.response) for s in false_positives if s.ours]
  assert wrong == []


def test_right_on_the_unit_and_reordering_classes(scored):
  """Units in every text command (and after a gold's closing `$`), nested expressions reordered
  at depth 2-3 and their near misses: all right, and the commands all appear."""
  kinds = ("equal/unit_commands", "equal/units_after_math", "unequal/unit_last_digit",
           "equal/nested_reordered", "unequal/nested_near_miss")
  wrong = [(s.pair.kind, s.pair.gold, s.pair.response) for s in scored
           if s.pair.kind in kinds and s.ours != s.pair.expected]
  assert wrong == []
  counts = collections.Counter(s.pair.kind for s in scored)
  assert all(counts[k] > 300 for k in kinds), counts
  commands = {c for s in scored if s.pair.kind == "equal/unit_commands"
              for c in agreement.UNIT_COMMANDS if f"\\{c}{{" in s.pair.response}
  assert commands == set(agreement.UNIT_COMMANDS)


def test_math_verify_alone_is_wrong_on_the_separator_forms(scored):
  """The suite can tell the graders apart: plain math-verify misses the LaTeX thin-space
  thousands separators that the project's grader reads."""
  seps = [s for s in scored if s.pair.kind == "equal/separators"]
  assert all(s.ours for s in seps)
  assert sum(not s.plain for s in seps) > 100


@pytest.mark.parametrize("gold, variant, fn", [
    ("11111111100", "11,\\!111,\\!111,\\!100", agreement.separators),
    ("16386.20", "\\$16,\\!386.20", agreement.currency),
    ("\\frac{1+\\sqrt{5}}{2}", "\\frac{\\sqrt{5} + 1}{2}", agreement.sums_reordered),
    ("\\sqrt{2+\\sqrt{3}}", "\\sqrt{\\sqrt{3} + 2}", agreement.sums_reordered),
    ("3\\sqrt{13}", "\\sqrt{13} \\cdot 3", agreement.products_reordered),
    ("(2,\\infty)", "[2,\\infty)", agreement.bracket),
    ("(0,9) \\cup (9,36)", "(0,9) \\cup(9,36]", agreement.bracket),
    ("\\frac{1}{2^{98}}", "\\frac{1}{2^{99}}", agreement.exponent),
    ("(6,31,-1)", "(-6,31,-1)", agreement.sign),
    ("y = -2x", "y = 2x", agreement.sign),
    ("\\$36", "\\$37", agreement.last_digit),
])
def test_variant_generators(gold, variant, fn):
  assert variant in fn(gold)


@pytest.mark.parametrize("gold, fn", [
    ("0", agreement.sign),                        # -0 is 0
    ("(0,9)", agreement.sign),
    ("(-\\infty,\\infty)", agreement.bracket),    # no finite endpoint
    ("137 \\frac{1}{2}", agreement.products_reordered),  # a mixed number, not a product
    ("a_{n+1}", agreement.sums_reordered),        # subscripts are names
    ("0.56 = 56\\%", agreement.last_digit),       # the other side still holds the value
    ("\\{x|-2\\leq x < 1\\}", agreement.sign),
    ("22.1cm^{2}", agreement.exponent),           # a unit's exponent
    ("\\text{(C)}", agreement.last_digit),
])
def test_generators_skip_what_would_not_change_the_value(gold, fn):
  assert fn(gold) == []


def test_nested_pairs_share_their_drawn_gold_and_the_near_miss_changes_one_number():
  import random
  import re
  (gold, equal), = agreement.nested_reordered("5", random.Random(3))
  (gold2, miss), = agreement.nested_near_miss("5", random.Random(3))
  numbers = lambda s: sorted(re.findall(r"\d+", s))
  assert gold == gold2 and equal != gold and numbers(equal) == numbers(gold)
  assert len(set(numbers(miss)) ^ set(numbers(gold))) <= 2 and numbers(miss) != numbers(gold)
