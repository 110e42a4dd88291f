"""Answer equivalence: string normalisation, exact symbolic comparison, then math-verify.

This module runs inside grader worker processes (see `pool.py`), which enforce the time limit by
killing the process; nothing here is safe to call on untrusted input in the trainer itself.

Order of decisions, each final when it decides:
1. normalised strings equal -> equal (also covers text answers math-verify cannot parse); the
   normalisation drops units after a number, written in any text command (TEXT_COMMANDS of
   extract.py) or, in a gold, after the closing `$` of its math (`$40$ cm`);
2. multiple-choice gold (a single letter A-E) -> the prediction's letter must match;
3. a number in a stated base (52_8) -> the digits and the base must match (math-verify drops
   the subscript, so 52_9 would pass);
4. interval-shaped answers -> their bracket kinds must match ([a,b) is never (a,b));
5. both parse to exact numbers (no floats, no free symbols; a decimal gold is exact, so both
   sides' decimals become rationals), or tuples / finite sets of them -> equal when the same up
   to reordering (6.), unequal when shown different at 50 digits (fast, and where
   math-verify's float tolerance gives false positives such as 1/2^{98} = 1/2^{99},
   1/2006! = 1/2004! or .0000672 = .0000673), else equal when the difference simplifies to 0;
   when none is shown, math-verify decides;
6. otherwise, the parsed expressions are the same up to the order of the operands of sums and
   products at any depth (`canonical_key`) -> equal, without evaluating anything;
7. math-verify's `verify(gold, pred)` on the normalised, \\boxed{}-wrapped strings, after the
   prediction's symbols take the assumptions of the gold's symbols of the same name (its parser
   gives the `i` of `5i` and of `i \\cdot 5` different ones, so they never compare equal).
"""

from __future__ import annotations

import dataclasses
import functools
import re

import sympy

from autocode_jax.grading.extract import TEXT_COMMANDS, UNIT_COMMANDS, command_pattern

_TEXT_CMDS = re.compile(command_pattern(TEXT_COMMANDS) + r"\s*\{([^{}]*)\}")
# Units that may trail a number; only stripped after a number.
_UNIT_WORDS = (r"(?:cm|mm|km|kg|mg|sec|seconds?|min|minutes?|hours?|hrs?|days?|weeks?|"
               r"years?|degrees?|dollars?|cents?|units?|sq\.?\s*units|square\s+units|inches|inch|"
               r"feet|foot|ft|miles?|mph|km/h|meters?|m/s|liters?|ml|people|students|ways|"
               r"points?|percent)")
# A unit is only stripped after a number (see _numeric); a one-letter unit only after a space,
# so that 2s and 6m stay products.
_TRAILING_UNIT = re.compile(r"^(.*?[\d}])(?:\s*(?:\\,|\\;|\\ |~)?\s*" + _UNIT_WORDS +
                            r"|(?:\s*(?:\\,|\\;|\\ |~)\s*|\s+)[mshgl])(?:\s*\^?\{?[23]\}?)?\s*$",
                            re.IGNORECASE)
_TEXT_UNIT = re.compile(r"^(.*?[\d}])\s*(?:\\,|\\;|\\ |~)?\s*" + command_pattern(UNIT_COMMANDS) +
                        r"\s*\{\s*[a-zA-Z][a-zA-Z.\s]*\}(?:\s*\^\s*\{?[23]\}?)?\s*$")
# Math followed by words outside it, as golds write units: `$40$ cm`, `$5$ \text{ cm}`.
_MATH_THEN_TEXT = re.compile(r"^\$([^$]+)\$((?:[^$\d]|\^\s*\{?[23]\}?)+)$")
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
# Thousands separators that only ever separate thousands: MATH's ,\! and {,}, LaTeX thin and
# negative thin spaces, and Unicode thin / narrow no-break / no-break spaces. A plain comma is
# only one when the whole answer is a thousands-separated number (1,000 but not the pair 1,2).
_SEP = r"(?:,\s*\\!\s*|\{,\}\s*|\\,\s*|\\!\s*|\\thinspace\s*|[\u2009\u202f\u00a0])"
_GROUPED = re.compile(r"(?<![\d.])\d{1,3}(?:" + _SEP + r"\d{3})+(?!\d)")
_CURRENCY = re.compile(r"(?:\\\$|\\textdollar|\\pounds|\\euro|\\yen|[$£€¥])\s*(?=[\d.])")
_MIXED = re.compile(r"^(-?)(\d+)\s*\\[dt]?frac\s*\{?(\d+)\}?\s*\{?(\d+)\}?$")
_CHOICE = re.compile(r"^\(?([A-E])\)?$")
_INTERVAL = re.compile(r"^([\(\[])[^\(\)\[\]]*,[^\(\)\[\]]*([\)\]])$")
_BASE = re.compile(r"^(-?)([0-9A-Z]*[0-9][0-9A-Z]*)_\{?(\d+)\}?$", re.IGNORECASE)


def _numeric(s: str) -> bool:
  """Whether s (after a relation's left side) is a number: a digit, and no letter outside
  LaTeX commands (5, \\frac{270}{7}, 3\\sqrt{2}, 8\\pi; not 2x)."""
  s = re.sub(r"^.*(?:=|\\approx)", "", s)
  return bool(re.search(r"\d", s)) and not re.search(r"[a-zA-Z]", re.sub(r"\\[a-zA-Z]+", "", s))


def _strip_unit(s: str, pattern: re.Pattern) -> str:
  m = pattern.match(s)
  return m.group(1) if m and _numeric(m.group(1)) else s


def _brace_fracs(s: str) -> str:
  """\\frac with unbraced arguments (\\frac34, \\frac\\pi 2, \\frac{1}2) written with braces."""
  out, i = [], 0
  for m in re.finditer(r"\\frac(?![a-zA-Z])", s):
    if m.start() < i:
      continue
    out.append(s[i:m.end()])
    j, args = m.end(), []
    for _ in range(2):
      while j < len(s) and s[j] == " ":
        j += 1
      if j >= len(s):
        break
      if s[j] == "{":
        depth, k = 0, j
        while k < len(s):
          depth += {"{": 1, "}": -1}.get(s[k], 0)
          if depth == 0:
            break
          k += 1
        args.append(s[j:k + 1])
        j = k + 1
      else:
        cmd = re.match(r"\\[a-zA-Z]+|.", s[j:])
        args.append("{" + cmd.group() + "}")
        j += cmd.end()
    out.append("".join(args))
    i = j
  return "".join(out) + s[i:]


def normalize(s: str) -> str:
  """Surface normalisation that never changes the mathematical value."""
  s = s.strip()
  m = _MATH_THEN_TEXT.match(s)
  if m:  # the unit after the math, then stripped as any unit is
    s = m.group(1).strip() + " " + m.group(2).strip()
  s = s.strip("$").strip()
  s = _CURRENCY.sub("", s)
  s = _GROUPED.sub(lambda m: re.sub(r"\D", "", m.group()), s)
  s = re.sub(r"\\[hv]?phantom\s*(?:\{[^{}]*\}|\\[a-zA-Z]+|.)", "", s)
  s = re.sub(r"\\(?:left|right)(?![a-zA-Z])\s*", "", s)
  s = re.sub(r"\\(?:displaystyle|!|,|;|:)(?![a-zA-Z])", " ", s)
  s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\$", "")
  s = _brace_fracs(s) if "\\frac" in s else s
  s = s.replace("−", "-").replace("\\le ", "\\leq ").replace("\\ge ", "\\geq ")
  s = re.sub(r"\^\s*\{?\\circ\}?|°", "", s)            # degrees
  s = re.sub(r"\\?%", "", s)                            # percent sign
  s = s.strip().rstrip(".,;").strip()
  s = _strip_unit(s, _TEXT_UNIT)                         # 9\text{ values}, 5.4 \text{ cents}
  for _ in range(3):                                     # \text{(C)}, \mathrm{Evelyn}, nested once
    s = _TEXT_CMDS.sub(r"\1", s)
  s = s.strip().rstrip(".,;").strip()
  s = _strip_unit(s, _TRAILING_UNIT)                     # 22.1cm^{2}, 12 ft, 3 s
  s = re.sub(r"\s+", " ", s).strip()
  if _THOUSANDS.match(s):
    s = s.replace(",", "")
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
  """A finite number without floats or symbols (5:00 parses as 5/0 = zoo: not one)."""
  return (isinstance(e, sympy.Expr) and not e.free_symbols and not e.atoms(sympy.Float)
          and e.is_number and not e.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo))


def shown_different(a: sympy.Expr, b: sympy.Expr, digits: int = 50) -> bool:
  """Whether two exact numbers are shown to differ: both evaluate to finite numbers at `digits`
  significant digits and differ by more than 10^-(digits - 20) of the larger (sympy's evalf
  raises its working precision until the digits are right, so 1/2006! and 1/2004! differ and
  an unsimplified zero difference does not)."""
  try:
    x, y = sympy.N(a, digits), sympy.N(b, digits)
    if not (x.is_number and y.is_number) or x.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo) \
        or y.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo):
      return False
    scale = max(abs(x), abs(y))
    return bool(abs(x - y) > scale * sympy.Float(10) ** (20 - digits))
  except (TypeError, ValueError, ArithmeticError):
    return False


def _operands(e, kind) -> list:
  """The operands of a sum or product with nested ones of the same kind flattened into it."""
  out = []
  for x in e.args:
    out += _operands(x, kind) if x.func is kind else [x]
  return out


def _defined(e) -> bool:
  """False for what parses to an undefined value (5:00 parses as 5/0 = zoo, as -5:00 does):
  two of those are not equal answers for having the same form."""
  return not (isinstance(e, sympy.Basic) and e.has(sympy.zoo, sympy.nan))


def canonical_key(e) -> str:
  """A string that two expressions share when they are the same up to the order (and grouping)
  of the operands of sums, commutative products and finite sets, at any depth: inside radicals,
  fractions, exponents and function arguments. Nothing is evaluated, so it costs one walk of the
  tree however large the numbers it holds."""
  if not isinstance(e, sympy.Basic):
    return repr(e)
  if not e.args:
    return sympy.srepr(e)
  if isinstance(e, (sympy.Add, sympy.Mul)) and e.is_commutative:
    keys = sorted(canonical_key(x) for x in _operands(e, e.func))
  elif isinstance(e, sympy.FiniteSet):
    keys = sorted(canonical_key(x) for x in e.args)
  else:
    keys = [canonical_key(x) for x in e.args]
  return f"{type(e).__name__}({', '.join(keys)})"


def exact_compare(a, b) -> bool | None:
  """For exact numbers (or tuples / finite sets of them): True when equal, False when shown
  different (see `shown_different`), else None; None for anything else. The cheap checks come
  first: the same expression up to commutative reordering (`canonical_key`) is equal, a
  difference at 50 digits is unequal; only what neither decides goes to sympy's simplify."""
  if _is_exact_number(a) and _is_exact_number(b):
    if a == b or canonical_key(a) == canonical_key(b):
      return True
    if shown_different(a, b):
      return False
    return True if sympy.simplify(a - b) == 0 else None
  if isinstance(a, sympy.Tuple) and isinstance(b, sympy.Tuple):
    if len(a) != len(b):
      return None
    results = [exact_compare(x, y) for x, y in zip(a, b)]
    if False in results:
      return False
    return True if all(r is True for r in results) else None
  if isinstance(a, sympy.FiniteSet) and isinstance(b, sympy.FiniteSet):
    if not all(_is_exact_number(x) for x in list(a) + list(b)):
      return None
    table = [[exact_compare(x, y) for y in b] for x in a]
    if any(all(r is False for r in row) for row in table) or \
        any(all(row[j] is False for row in table) for j in range(len(b))):
      return False  # an element shown different from every element of the other set
    unmatched = set(range(len(b)))
    for row in table:
      hit = next((j for j in sorted(unmatched) if row[j] is True), None)
      if hit is None:
        return None
      unmatched.remove(hit)
    return True if not unmatched else None
  return None


def _gold_symbols(pred, gold_symbols: dict[str, sympy.Symbol]):
  """pred with each symbol that shares a name with a gold symbol but not its assumptions
  replaced by the gold's (the pred is rebuilt only then, and kept if rebuilding evaluates it,
  as Eq(x, Interval(...)) would, to a truth value)."""
  if not isinstance(pred, sympy.Basic):
    return pred
  sub = {x: gold_symbols[x.name] for x in pred.free_symbols
         if isinstance(x, sympy.Symbol) and x.name in gold_symbols and gold_symbols[x.name] != x}
  if not sub:
    return pred
  new = pred.xreplace(sub)
  return pred if isinstance(new, sympy.logic.boolalg.BooleanAtom) else new


def _rationalize(e):
  """e with its floats as the rationals they were typed as (0.0000672 -> 21/312500)."""
  if not isinstance(e, sympy.Basic):
    return e
  return e.xreplace({f: sympy.Rational(str(f)) for f in e.atoms(sympy.Float)})


def _base_number(s: str, valid: bool = True) -> tuple[str, str, int] | None:
  """(sign, digits, base) of a number written in a base, `52_8` or `-4210_{5}`; with `valid`,
  only if every digit is one of the base's."""
  m = _BASE.match(s.replace(" ", ""))
  if not m:
    return None
  sign, digits, base = m.group(1), m.group(2).upper().lstrip("0") or "0", int(m.group(3))
  if valid and (not 2 <= base <= 36 or any(int(c, 36) >= base for c in digits)):
    return None
  return sign, digits, base


@functools.cache
def _extraction_configs() -> tuple:
  """math-verify's default extraction, without its unit stripping: that removes any trailing
  letter that could be a unit, so 'a + b + c', '10t + 12' and '2s' lose their last variable.
  Units are stripped by `normalize`, after numbers only. Built once per worker."""
  from math_verify import ExprExtractionConfig, LatexExtractionConfig
  latex = LatexExtractionConfig()
  latex = dataclasses.replace(latex, normalization_config=dataclasses.replace(
      latex.normalization_config, units=False))
  return (latex, ExprExtractionConfig())


def _parse(s: str, timeout_s: int) -> list:
  """math-verify's parse of a normalised answer under `_extraction_configs`."""
  from math_verify import parse
  return parse("\\boxed{" + s + "}", list(_extraction_configs()), parsing_timeout=timeout_s)


def equivalent(gold: str, pred: str, timeout_s: int = 5) -> bool:
  """Whether `pred` is mathematically equal to `gold` (both answer strings, not responses)."""
  from math_verify import verify  # heavy: imported in the worker only

  g, p = normalize(gold), normalize(pred)
  if not p:
    return False
  if g == p:
    return True
  letter = _choice(g)
  if letter is not None:
    return _choice(p) == letter
  based = _base_number(g)
  if based is not None:
    pb = _base_number(p, valid=False)
    if pb is not None:
      return pb == based
    bare = re.match(r"^(-?)([0-9A-Z]+)$", p.replace(" ", ""), re.IGNORECASE)
    if bare:  # the digits without the base
      return (bare.group(1), bare.group(2).upper().lstrip("0") or "0") == based[:2]
  gk, pk = _interval_kinds(g), _interval_kinds(p)
  if gk is not None and pk is not None and gk != pk:
    return False
  gp, pp = _parse(g, timeout_s), _parse(p, timeout_s)
  if not gp or not pp:
    return False
  names = {x.name: x for e in gp if isinstance(e, sympy.Basic) for x in e.free_symbols
           if isinstance(x, sympy.Symbol)}
  pp = [_gold_symbols(x, names) for x in pp]
  g0, p0 = gp[0], pp[0]
  if isinstance(g0, sympy.Basic) and g0.atoms(sympy.Float):  # a decimal gold is exact
    g0, p0 = _rationalize(g0), _rationalize(p0)
  exact = exact_compare(g0, p0)  # exact numbers: reordering included
  if exact is not None:
    return exact
  if _defined(g0) and canonical_key(g0) == canonical_key(p0):  # the same up to reordering
    return True
  return bool(verify(gp, pp, timeout_seconds=timeout_s, allow_set_relation_comp=True))


def parses(gold: str, timeout_s: int = 5) -> bool:
  """Whether math-verify parses the normalised gold into a mathematical object (not just its
  string fallback)."""
  result = _parse(normalize(gold), timeout_s)
  return bool(result) and not isinstance(result[0], str)


def plain_math_verify(gold: str, response: str, timeout_s: int = 5) -> bool:
  """math-verify alone, as its README uses it: `verify(parse(gold), parse(response))` with the
  gold boxed and the whole response given to its own extraction. The reference that
  benchmarks/grading_bench.py and the agreement tests compare `equivalent` against."""
  from math_verify import parse, verify
  return bool(verify(parse("\\boxed{" + gold + "}", parsing_timeout=timeout_s),
                     parse(response, parsing_timeout=timeout_s), timeout_seconds=timeout_s))

