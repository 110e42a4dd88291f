"""A generated agreement suite for the grader: for every gold answer of a dataset, surface
variants that must grade equal and near misses that must grade unequal, each boxed inside a
sentence. Everything is built by code from the golds; a pair's expected verdict is what its
construction makes true (a variant that would not change the value, or not keep it, is not
emitted). tests/test_grading_agreement.py and benchmarks/grading_bench.py score it.
"""

from __future__ import annotations

import dataclasses
import random
import re
import zlib
from typing import Callable, Iterable, Sequence

from autocode_jax.grading.extract import TEXT_COMMANDS, UNIT_COMMANDS, command_pattern

# Thousands separators as MATH and GSM8K write them, and thin spaces.
SEPARATORS = (",", "{,}", ",\\!", "\\,", "\u2009", "\u202f")
_CONTEXTS = (
    "Therefore, the final answer is $\\boxed{%s}$.",
    "\\boxed{%s}",
    "Checking the 2 cases again, we get \\(\\boxed{%s}\\) as the result.",
    "So the answer is $\\boxed{%s}$ and we are done.",
    "Putting everything together:\n$$\\boxed{%s}$$",
)
_UNITS = ("\\text{ cm}", "\\text{ meters}", "\\text{ dollars}", " \\text{units}",
          "\\text{ seconds}")
_UNIT_WORDS = ("cm", "meters", "dollars", "units", "seconds", "inches", "degrees", "km")
_TEXT_GROUP = re.compile(command_pattern(TEXT_COMMANDS) + r"\s*\{[^{}]*\}(?:\^\{?\d\}?)?|"
                         r"(?<=[\d\s])(?:cm|mm|km|m|ft|in)\^\{?[23]\}?\s*$")  # and a bare unit
_NUMBER = re.compile(r"^(-?)(\\\$)?(\d+)(\.\d+)?$")
_SEPARATED = re.compile(r"(?<=\d)(?:,\\!\s*|\{,\}|,(?=\d{3}(?!\d)))(?=\d{3})")
_CHOICE = re.compile(r"^\\text(?:bf)?\{\(?[A-E]\)?\}$|^\(?[A-E]\)?$")


@dataclasses.dataclass(frozen=True)
class Pair:
  """One pair of the suite: `response` (a sentence with the boxed answer) against `gold`."""
  dataset: str
  index: int      # the gold's position in the dataset
  kind: str       # "equal/<variant>" or "unequal/<variant>"
  gold: str
  response: str

  @property
  def expected(self) -> bool:
    return self.kind.startswith("equal/")


# ---- LaTeX scanning -------------------------------------------------------------------------

def _depths(s: str) -> list[int]:
  """The bracket depth of each character ({, (, [ open; }, ), ] close; \\{ counts too): an
  opener and its closer get the same depth, what lies between them one more."""
  out, d = [], 0
  for c in s:
    if c in ")]}":
      d -= 1
    out.append(d)
    if c in "([{":
      d += 1
  return out


def _text_mask(s: str) -> list[bool]:
  """True for characters inside \\text{...}-like groups (with a unit exponent after one) and in a
  bare trailing unit with an exponent (22.1cm^{2}): digits there are not the answer's value."""
  mask = [False] * len(s)
  for m in _TEXT_GROUP.finditer(s):
    for i in range(m.start(), m.end()):
      mask[i] = True
  return mask


def _strip_separators(s: str) -> str:
  return _SEPARATED.sub("", s)


def _number(gold: str) -> tuple[str, str, str, str] | None:
  """(sign, currency, integer part, fraction part) of a plain number gold, separators removed."""
  m = _NUMBER.match(_strip_separators(gold.strip()))
  return m.groups(default="") if m else None  # type: ignore[return-value]


def _group_thousands(digits: str, sep: str) -> str:
  head = len(digits) % 3 or 3
  return sep.join([digits[:head]] + [digits[i:i + 3] for i in range(head, len(digits), 3)])


# ---- equal variants -------------------------------------------------------------------------

def separators(gold: str) -> list[str]:
  """Thousands separators added in every form (or removed, when the gold has them)."""
  num = _number(gold)
  if num is None or len(num[2]) < 4:
    return []
  sign, cur, whole, frac = num
  out = [f"{sign}{cur}{_group_thousands(whole, sep)}{frac}" for sep in SEPARATORS]
  out.append(f"{sign}{cur}{whole}{frac}")
  return [v for v in out if v != gold]


def currency(gold: str) -> list[str]:
  """A dollar sign before a number (with and without MATH's `,\\!` separators), or removed."""
  num = _number(gold)
  if num is None:
    return []
  sign, cur, whole, frac = num
  if cur:
    return [f"{sign}{whole}{frac}"]
  out = [f"{sign}\\${whole}{frac}"]
  if len(whole) >= 4:
    out.append(f"{sign}\\${_group_thousands(whole, SEPARATORS[2])}{frac}")
  return out


def units(gold: str, rng: random.Random) -> list[str]:
  """A unit in \\text{} after a plain number (or the gold's unit removed)."""
  m = re.match(r"^(.*?\d)\s*\\text\{\s*[a-zA-Z ]+\}$", gold.strip())
  if m:
    return [m.group(1)]
  if _number(gold) is None or "\\$" in gold:
    return []
  return [gold + rng.choice(_UNITS)]


def unit_commands(gold: str, rng: random.Random) -> list[str]:
  """A unit after a plain number in one of the text commands units are written in
  (extract.UNIT_COMMANDS: \\text, \\textnormal, \\textrm, \\textup, \\mathrm, \\mbox, ...),
  chosen per gold."""
  if _number(gold) is None or "\\$" in gold:
    return []
  return [f"{gold}\\{rng.choice(UNIT_COMMANDS)}{{ {rng.choice(_UNIT_WORDS)}}}"]


def units_after_math(gold: str, rng: random.Random) -> list[tuple[str, str]]:
  """(gold, answer): the gold number written in math mode with its unit after the closing `$`
  (`$40$ cm`), answered with the unit in a text command."""
  if _number(gold) is None or "\\$" in gold:
    return []
  word, cmd = rng.choice(_UNIT_WORDS), rng.choice(UNIT_COMMANDS)
  return [(f"${gold}$ {word}", f"{gold}\\{cmd}{{ {word}}}")]


def unit_last_digit(gold: str, rng: random.Random) -> list[str]:
  """A near miss with a unit: the number's last digit changed, a unit in a text command after."""
  if _number(gold) is None or "\\$" in gold:
    return []
  return [f"{v}\\{rng.choice(UNIT_COMMANDS)}{{ {rng.choice(_UNIT_WORDS)}}}"
          for v in last_digit(gold)]


# Nested radicals, fractions and powers, two or three levels deep, with positive parameters
# a..e: raising any one of them changes the value (every shape is strictly monotone in each).
# `deepest` names the parameter at the greatest depth.
NESTED_SHAPES = (
    ("\\frac{\\sqrt{\\sqrt{%(a)d}+\\sqrt{%(b)d}}}{%(c)d\\sqrt{%(d)d}+%(e)d}", "b"),
    ("\\sqrt{%(a)d+\\sqrt{%(b)d+%(c)d\\sqrt{%(d)d}}}+%(e)d", "d"),
    ("(%(a)d+\\sqrt{%(b)d})^{%(c)d}+%(d)d\\sqrt{%(e)d+\\sqrt{2}}", "e"),
    ("\\frac{%(a)d+\\sqrt{%(b)d}}{\\sqrt{%(c)d}+\\sqrt{%(d)d+\\sqrt{%(e)d}}}", "e"),
    ("%(a)d^{\\sqrt{%(b)d}+%(c)d}+\\sqrt{%(d)d+%(e)d\\sqrt{3}}", "b"),
)


def _nested(rng: random.Random) -> tuple[str, dict[str, int], str]:
  shape, deepest = rng.choice(NESTED_SHAPES)
  params = {k: rng.randint(2, 19) for k in "abcde"}
  return shape, params, deepest


def _reordered(expr: str) -> str:
  """Sums and products reversed at every depth."""
  out = _rewrite(expr, _reverse_sum)
  return _rewrite(out, _reverse_product)


def nested_reordered(gold: str, rng: random.Random) -> list[tuple[str, str]]:
  """(gold, answer): a nested expression drawn per gold (NESTED_SHAPES), answered with the
  operands of its sums and products reversed at every depth."""
  shape, params, _ = _nested(rng)
  expr = shape % params
  return [(expr, _reordered(expr))]


def nested_near_miss(gold: str, rng: random.Random) -> list[tuple[str, str]]:
  """(gold, answer): the same drawn expression, reordered, with its deepest parameter raised
  by one: a different value that only a numeric or symbolic check can tell."""
  shape, params, deepest = _nested(rng)
  return [(shape % params, _reordered(shape % dict(params, **{deepest: params[deepest] + 1})))]


def dfrac(gold: str) -> list[str]:
  if "\\dfrac" in gold:
    return [gold.replace("\\dfrac", "\\frac")]
  return [gold.replace("\\frac", "\\dfrac")] if "\\frac" in gold else []


def left_right(gold: str) -> list[str]:
  """Brackets as \\left( ... \\right] pairs, or the \\left / \\right removed."""
  if "\\left" in gold or "\\right" in gold:
    return [re.sub(r"\\(?:left|right)(?![a-zA-Z])\s*", "", gold)]
  if not re.search(r"[\(\[]", gold) or "\\begin" in gold or "\\sqrt[" in gold:
    return []
  mask = _text_mask(gold)
  out = "".join(("\\left" if c in "([" else "\\right" if c in ")]" else "") + c
                if not mask[i] else c for i, c in enumerate(gold))
  return [out] if out != gold else []


_SUM_BLOCKERS = re.compile(r"\\pm|\\mp|<|>|\\[lg]eq?(?![a-z])|\\cup|\\cap|\\in(?![a-z])|&|\\\\|"
                           r":|;|\\%|%|\\circ|\\infty|\\begin|\\!|\\,|\\\{|\\\}|'|\||" +
                           command_pattern(TEXT_COMMANDS))
_UNARY_BEFORE = set("^_({[,=+-*/") | {""}


def _split_top(s: str, seps: str) -> list[str]:
  """s cut at depth-0 characters in `seps` (the separators kept as their own pieces)."""
  out, start, depth = [], 0, _depths(s)
  for i, c in enumerate(s):
    if c in seps and depth[i] == 0:
      out += [s[start:i], c]
      start = i + 1
  return out + [s[start:]]


def _terms(s: str) -> list[tuple[str, str]] | None:
  """The depth-0 additive terms of s as (sign, body); None when s is not a plain sum."""
  terms, sign, start, depth = [], "+", 0, _depths(s)
  i = 0
  while i < len(s):
    c = s[i]
    prev = s[:i].rstrip()[-1:] if s[:i].strip() else ""
    if c in "+-" and depth[i] == 0 and prev not in _UNARY_BEFORE and not prev.endswith("\\"):
      body = s[start:i].strip()
      if not body:
        return None
      terms.append((sign, body))
      sign, start = c, i + 1
    elif c in "+-" and depth[i] == 0 and not s[start:i].strip():
      sign = "-" if (sign == "-") != (c == "-") else "+"
      start = i + 1
    i += 1
  body = s[start:].strip()
  if not body:
    return None
  terms.append((sign, body))
  return terms


def _join_terms(terms: Sequence[tuple[str, str]]) -> str:
  out = ("-" if terms[0][0] == "-" else "") + terms[0][1]
  for sign, body in terms[1:]:
    out += f" {sign} {body}"
  return out


def _reorder_level(s: str, term_fn: Callable[[str], str | None]) -> str:
  """Applies term_fn to each additive term of s, side of an `=` and element of a `,` list."""
  pieces = _split_top(s, ",=")
  out = []
  for p in pieces:
    if p in (",", "="):
      out.append(p)
      continue
    lead, body, trail = re.match(r"^(\s*)(.*?)(\s*)$", p, re.DOTALL).groups()
    new = term_fn(body) if body else None
    out.append(lead + (new if new is not None else body) + trail)
  return "".join(out)


def _groups(s: str) -> list[tuple[int, int]]:
  """(start, end) of the contents of every depth-0 {...} and (...) group, skipping subscripts
  and the arguments of \\text-like commands and environments."""
  out, depth = [], _depths(s)
  i = 0
  while i < len(s):
    c = s[i]
    if c in "{(" and depth[i] == 0 and not (i > 0 and s[i - 1] == "\\"):
      close = "}" if c == "{" else ")"
      j = next((k for k in range(i + 1, len(s)) if s[k] == close and depth[k] == 0), None)
      if j is None:
        return out
      before = s[:i].rstrip()
      if not before.endswith("_") and not re.search(
          r"(?:" + command_pattern(TEXT_COMMANDS + ("begin", "end")) + r")\s*$", before):
        end = re.search(r"\\right\s*$", s[i + 1:j])  # \left( ... \right): \right stays out
        out.append((i + 1, i + 1 + end.start() if end else j))
      i = j + 1
    else:
      i += 1
  return out


def _rewrite(s: str, term_fn: Callable[[str], str | None]) -> str:
  """term_fn applied at the top level of s and, recursively, inside every group."""
  if _SUM_BLOCKERS.search(s):
    return s
  parts, pos = [], 0
  for a, b in _groups(s):
    parts += [s[pos:a], _rewrite(s[a:b], term_fn)]
    pos = b
  inner = "".join(parts) + s[pos:]
  return _reorder_level(inner, term_fn)


def _reverse_sum(body: str) -> str | None:
  terms = _terms(body)
  if terms is None or len(terms) < 2:
    return None
  return _join_terms(list(reversed(terms)))


_FACTOR = re.compile(r"\s*(?:\d+(?:\.\d+)?|\.\d+|\\pi(?![a-zA-Z])|[a-zA-Z](?![a-zA-Z(])|"
                     r"\\sqrt\s*(?:\[\d+\])?\s*\{|\\d?frac\s*\{|\()")


def _factors(term: str) -> list[str] | None:
  """The implicit-product factors of a term (numbers, single letters, \\pi, \\sqrt{}, \\frac{}{},
  parenthesised groups, each with a ^ exponent); None if anything else is in it."""
  if re.match(r"^\d+\s*\\d?frac\s*\{\d+\}\s*\{\d+\}$", term.strip()):
    return None  # a mixed number: 1\frac{4}{5} is 1 + 4/5, not a product
  out, i, depth = [], 0, _depths(term)
  while i < len(term):
    m = _FACTOR.match(term, i)
    if not m:
      rest = term[i:].strip()
      if rest.startswith("\\cdot") or rest.startswith("\\times"):
        i = term.index("\\", i) + (5 if rest.startswith("\\cdot") else 6)
        continue
      return None if rest else out
    j = m.end()
    opened = term[j - 1]
    if opened in "{(":
      nargs = 2 if "frac" in m.group() else 1
      for n in range(nargs):
        close = "}" if opened == "{" else ")"
        base = depth[j - 1]
        k = next((k for k in range(j, len(term)) if term[k] == close and depth[k] == base), None)
        if k is None:
          return None
        j = k + 1
        if n + 1 < nargs:
          if j >= len(term) or term[j] != "{":
            return None
          j += 1
    e = re.match(r"\s*(?:\^\s*(?:\{[^{}]*\}|\d|[a-zA-Z])|!)", term[j:])
    if e:
      j += e.end()
    out.append(term[i:j].strip())
    i = j
  return out


def _reverse_product(body: str) -> str | None:
  terms = _terms(body)
  if terms is None:
    return None
  changed = False
  new = []
  for sign, t in terms:
    fs = _factors(t)
    if fs and len(fs) >= 2 and len(set(fs)) > 1:
      t, changed = " \\cdot ".join(reversed(fs)), True
    new.append((sign, t))
  return _join_terms(new) if changed else None


def sums_reordered(gold: str) -> list[str]:
  """Additive terms in reverse order, at the top level and inside radicals, fractions and
  parentheses (never inside subscripts or text)."""
  out = _rewrite(gold, _reverse_sum)
  return [out] if _canon(out) != _canon(gold) else []


def products_reordered(gold: str) -> list[str]:
  """Implicit products written as explicit products in reverse order (2\\sqrt{3} -> \\sqrt{3}
  \\cdot 2), in every additive term."""
  out = _rewrite(gold, _reverse_product)
  return [out] if _canon(out) != _canon(gold) else []


def _canon(s: str) -> str:
  return re.sub(r"\s+", "", s)


# ---- near misses ----------------------------------------------------------------------------

def _single_value(gold: str) -> bool:
  """Whether a change to one number of the gold changes its value: not a set-builder, an
  approximation or a chain of equal values (0.56 = 56\\%), where another part still holds it."""
  if "|" in gold or "\\approx" in gold or "\\mid" in gold:
    return False
  depth = _depths(gold)
  eqs = [i for i, c in enumerate(gold) if c == "=" and depth[i] == 0]
  return not eqs or not re.search(r"\d", gold[:eqs[-1]])


def last_digit(gold: str) -> list[str]:
  """The last digit outside \\text{} changed (d -> d+1, 9 -> 8: never a new zero denominator)."""
  mask = _text_mask(gold)
  idx = [i for i, c in enumerate(gold) if c.isdigit() and not mask[i]]
  if not idx or _CHOICE.match(gold.strip()) or not _single_value(gold):
    return []
  i = idx[-1]
  d = int(gold[i])
  return [gold[:i] + str(d + 1 if d < 9 else 8) + gold[i + 1:]]


def exponent(gold: str) -> list[str]:
  """The first integer exponent (not a degree sign, not a unit's) plus one."""
  mask = _text_mask(gold)
  if not _single_value(gold):
    return []
  for m in re.finditer(r"\^\s*(\{\s*(-?\d+)\s*\}|(\d))", gold):
    if mask[m.start()]:
      continue
    n = int(m.group(2) or m.group(3))
    base = gold[:m.start()].rstrip()
    if base.endswith("1") and not re.search(r"\d1$", base) or base.endswith("(1)"):
      continue  # 1^n does not change
    return [gold[:m.start()] + f"^{{{n + 1}}}" + gold[m.end():]]
  return []


_INTERVAL_PART = re.compile(r"^\s*([\(\[])([^,\(\)\[\]]*),([^,\(\)\[\]]*)([\)\]])\s*$")


def bracket(gold: str) -> list[str]:
  """One finite endpoint's bracket kind flipped, in an interval or a union of intervals."""
  body = re.sub(r"\\(?:left|right)(?![a-zA-Z])\s*", "", gold)
  prefix = ""
  m = re.match(r"^\s*([a-zA-Z]\s*\\in\s*)(.*)$", body)
  if m:
    prefix, body = m.groups()
  parts = re.split(r"(\\cup)", body)
  for k in range(len(parts) - 1, -1, -2):
    p = _INTERVAL_PART.match(parts[k])
    if not p:
      return []
  flip = {"(": "[", "[": "(", ")": "]", "]": ")"}
  p = _INTERVAL_PART.match(parts[-1])
  lo, hi = p.group(2).strip(), p.group(3).strip()
  if "\\infty" not in hi:
    new = f"{p.group(1)}{lo},{hi}{flip[p.group(4)]}"
  elif "\\infty" not in lo:
    new = f"{flip[p.group(1)]}{lo},{hi}{p.group(4)}"
  else:
    return []
  return [prefix + "".join(parts[:-1]) + new]


def sign(gold: str) -> list[str]:
  """The sign of the first term flipped (after a relation's left side and opening brackets);
  not emitted where that term is zero, infinite, a \\pm, text or a choice letter."""
  if _CHOICE.match(gold.strip()) or "\\text" in gold or not _single_value(gold):
    return []
  depth = _depths(gold)
  start = 0
  for m in re.finditer(r"=|\\in(?![a-zA-Z])", gold):
    if depth[m.start()] == 0:
      start = m.end()
  m = re.compile(r"(?:\s|\\left|\\begin\{[pb]matrix\}|[\(\[]|\\\{)*").match(gold, start)
  i = m.end()
  rest = gold[i:]
  if not rest or re.match(r"-?\s*(?:\\infty|\\pm|\\mp|0(?![\d.])|0\.0*(?![\d]))", rest):
    return []
  if rest.startswith("-"):
    return [gold[:i] + rest[1:].lstrip()]
  if rest[0] in "+":
    return [gold[:i] + "-" + rest[1:]]
  return [gold[:i] + "-" + rest]


EQUAL = {"identity": lambda g, rng: [g], "separators": lambda g, rng: separators(g),
         "currency": lambda g, rng: currency(g), "units": units, "unit_commands": unit_commands,
         "dfrac": lambda g, rng: dfrac(g), "left_right": lambda g, rng: left_right(g),
         "sums_reordered": lambda g, rng: sums_reordered(g),
         "products_reordered": lambda g, rng: products_reordered(g)}
UNEQUAL = {"last_digit": lambda g, rng: last_digit(g), "exponent": lambda g, rng: exponent(g),
           "bracket": lambda g, rng: bracket(g), "sign": lambda g, rng: sign(g),
           "unit_last_digit": unit_last_digit}
# Kinds that bring their own gold, built from the dataset's: (gold, answer) pairs.
EQUAL_WITH_GOLD = {"units_after_math": units_after_math, "nested_reordered": nested_reordered}
UNEQUAL_WITH_GOLD = {"nested_near_miss": nested_near_miss}
NESTED = ("nested_reordered", "nested_near_miss")
# The nested kinds are drawn, not read from the gold: one gold in NESTED_EVERY seeds them
# (about a thousand pairs of each per three thousand golds), which keeps the suite's run time.
NESTED_EVERY = 3


def pairs_for(dataset: str, index: int, gold: str) -> list[Pair]:
  """Every pair the suite builds from one gold."""
  rng = random.Random(zlib.crc32(f"{dataset}/{index}".encode()))
  out = []
  for verdict, kinds in (("equal", EQUAL), ("unequal", UNEQUAL)):
    for name, fn in kinds.items():
      for v in fn(gold, rng):
        out.append(Pair(dataset, index, f"{verdict}/{name}", gold, rng.choice(_CONTEXTS) % v))
  for verdict, kinds in (("equal", EQUAL_WITH_GOLD), ("unequal", UNEQUAL_WITH_GOLD)):
    for name, fn in kinds.items():
      if name in NESTED and index % NESTED_EVERY:
        continue
      for g, v in fn(gold, rng):
        out.append(Pair(dataset, index, f"{verdict}/{name}", g, rng.choice(_CONTEXTS) % v))
  return out


def build_suite(golds: dict[str, Iterable[str]]) -> list[Pair]:
  """The suite for {dataset: golds} (an empty gold, a data quirk, gets no pairs)."""
  return [p for name, gs in golds.items() for i, g in enumerate(gs) if g.strip()
          for p in pairs_for(name, i, g)]


def answer_of(pair: Pair) -> str | None:
  """The boxed answer inside a pair's response."""
  from autocode_jax.grading.extract import last_boxed
  return last_boxed(pair.response)


@dataclasses.dataclass(frozen=True)
class Scored:
  """A pair's verdicts: the project's grader (`ours`, with a failure reason when its worker
  timed out or raised, and the seconds it took) and plain math-verify (`plain`, likewise)."""
  pair: Pair
  ours: bool
  plain: bool
  ours_failure: str | None = None
  plain_failure: str | None = None
  ours_seconds: float = 0.0


def score(pairs: Sequence[Pair], pool, timeout_s: float = 5.0) -> list[Scored]:
  """Every pair graded by `grade_results` (per dataset's extraction rules) and by
  `equivalence.plain_math_verify`, both in `pool`'s worker processes."""
  from autocode_jax.grading.grader import grade_results
  ours: dict[int, object] = {}
  by_dataset: dict[str, list[int]] = {}
  for i, p in enumerate(pairs):
    by_dataset.setdefault(p.dataset, []).append(i)
  for dataset, idx in by_dataset.items():
    results = grade_results([pairs[i].response for i in idx], [pairs[i].gold for i in idx],
                            dataset, timeout_s=timeout_s, pool=pool)
    ours.update(zip(idx, results))
  plain = pool.map("plain_math_verify", [(p.gold, p.response, max(1, int(timeout_s)))
                                         for p in pairs], timeout_s)
  out = []
  for i, p in enumerate(pairs):
    ok, value = plain[i]
    out.append(Scored(p, ours[i].correct, bool(ok and value), ours[i].failure,
                      None if ok else str(value), ours[i].seconds))
  return out
