"""Answer equivalence: string normalisation, exact symbolic comparison, then math-verify.

This module runs inside grader worker processes (see `pool.py`), which enforce the time limit by
killing the process; nothing here is safe to call on untrusted input in the trainer itself.

Order of decisions, each final when it decides:
1. normalised strings equal -> equal (also covers text answers math-verify cannot parse);
2. multiple-choice gold (a single letter A-E) -> the prediction's letter must match;
3. interval-shaped answers -> their bracket kinds must match ([a,b) is never (a,b));
4. both parse to exact numbers (no floats, no free symbols), or tuples/sets of them -> exact
   comparison: this is where math-verify's float tolerance gives false positives such as
   1/2^{98} = 1/2^{99} or 1/2006! = 1/2004!;
5. math-verify's `verify(gold, pred)` on the normalised, \\boxed{}-wrapped strings.
"""

from __future__ import annotations

import re

import sympy

_TEXT_CMDS = re.compile(r"\\(?:text|textbf|mathrm|mbox|mathbf|textit|operatorname)\s*\{([^{}]*)\}")
# Units that may trail a number; only stripped after a number.
_UNIT_WORDS = (r"(?:cm|mm|km|m|kg|g|mg|s|sec|seconds?|min|minutes?|hours?|hrs?|h|days?|weeks?|"
               r"years?|degrees?|dollars?|cents?|units?|sq\.?\s*units|square\s+units|inches|inch|"
               r"feet|foot|ft|miles?|mph|km/h|meters?|m/s|liters?|l|ml|people|students|ways|"
               r"points?|percent)")
_TRAILING_UNIT = re.compile(r"^(.*?\d)\s*(?:\\,|\\;|\\ |~)?\s*(?:" + _UNIT_WORDS +
                            r")(?:\^?\{?[23]\}?)?\s*$", re.IGNORECASE)
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:(?:,|\{,\})\d{3})+(?:\.\d+)?$")
_MIXED = re.compile(r"^(-?)(\d+)\s*\\[dt]?frac\s*\{?(\d+)\}?\s*\{?(\d+)\}?$")
_CHOICE = re.compile(r"^\(?([A-E])\)?$")
_INTERVAL = re.compile(r"^([\(\[])[^\(\)\[\]]*,[^\(\)\[\]]*([\)\]])$")


def normalize(s: str) -> str:
  """Surface normalisation that never changes the mathematical value."""
  s = s.strip().strip("$").strip()
  s = re.sub(r"\\(?:left|right|displaystyle|!|,|;|:)(?![a-zA-Z])", " ", s)
  s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\$", "")
  s = s.replace("−", "-").replace("\\le ", "\\leq ").replace("\\ge ", "\\geq ")
  s = re.sub(r"\^\s*\{?\\circ\}?|°", "", s)            # degrees
  s = re.sub(r"\\?%", "", s)                            # percent sign
  for _ in range(3):                                     # \text{cm}, \mathrm{(C)}, nested once
    s = _TEXT_CMDS.sub(r"\1", s)
  s = s.strip().rstrip(".,;").strip()
  m = _TRAILING_UNIT.match(s)
  if m:
    s = m.group(1)
  s = re.sub(r"\s+", " ", s).strip()
  if _THOUSANDS.match(s):
    s = s.replace("{,}", "").replace(",", "")
  m = _MIXED.match(s)
  if m:  # 137 \frac{1}{2}: a mixed number, not a product
    sign, whole, num, den = m.groups()
    s = f"{sign}({whole}+\\frac{{{num}}}{{{den}}})"
  return s


def _choice(s: str) -> str | None:
  m = _CHOICE.match(s.replace(" ", ""))
  return m.group(1) if m else None


def _interval_kinds(s: str) -> list[tuple[str, str]] | None:
  """Bracket kinds of an interval or a union of intervals, or None if s is not one."""
  parts = re.split(r"\\cup|∪", s.replace(" ", ""))
  kinds = []
  for p in parts:
    m = _INTERVAL.match(p)
    if not m:
      return None
    kinds.append((m.group(1), m.group(2)))
  return kinds


def _is_exact_number(e) -> bool:
  return (isinstance(e, sympy.Expr) and not e.free_symbols and not e.atoms(sympy.Float)
          and e.is_number)


def exact_compare(a, b) -> bool | None:
  """True/False when both are exact numbers (or tuples / finite sets of them), else None."""
  if _is_exact_number(a) and _is_exact_number(b):
    diff = sympy.simplify(a - b)
    if diff == 0:
      return True
    nonzero = diff.is_zero is False or (diff.is_number and sympy.N(diff, 50) != 0)
    return False if nonzero else None
  if isinstance(a, sympy.Tuple) and isinstance(b, sympy.Tuple):
    if len(a) != len(b):
      return None
    results = [exact_compare(x, y) for x, y in zip(a, b)]
    if False in results:
      return False
    return True if all(r is True for r in results) else None
  if isinstance(a, sympy.FiniteSet) and isinstance(b, sympy.FiniteSet):
    if len(a) != len(b) or not all(_is_exact_number(x) for x in list(a) + list(b)):
      return None
    unmatched = list(b)
    for x in a:
      hit = next((y for y in unmatched if exact_compare(x, y) is True), None)
      if hit is None:
        return False
      unmatched.remove(hit)
    return True
  return None


def equivalent(gold: str, pred: str, timeout_s: int = 5) -> bool:
  """Whether `pred` is mathematically equal to `gold` (both answer strings, not responses)."""
  from math_verify import parse, verify  # heavy: imported in the worker only

  g, p = normalize(gold), normalize(pred)
  if not p:
    return False
  if g == p:
    return True
  letter = _choice(g)
  if letter is not None:
    return _choice(p) == letter
  gk, pk = _interval_kinds(g), _interval_kinds(p)
  if gk is not None and pk is not None and gk != pk:
    return False
  gp = parse("\\boxed{" + g + "}", parsing_timeout=timeout_s)
  pp = parse("\\boxed{" + p + "}", parsing_timeout=timeout_s)
  if not gp or not pp:
    return False
  exact = exact_compare(gp[0], pp[0])
  if exact is not None:
    return exact
  return bool(verify(gp, pp, timeout_seconds=timeout_s, allow_set_relation_comp=True))


def parses(gold: str, timeout_s: int = 5) -> bool:
  """Whether math-verify parses the normalised gold into a mathematical object (not just its
  string fallback)."""
  from math_verify import parse
  result = parse("\\boxed{" + normalize(gold) + "}", parsing_timeout=timeout_s)
  return bool(result) and not isinstance(result[0], str)
