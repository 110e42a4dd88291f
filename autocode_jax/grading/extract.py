"""Final-answer extraction from responses and gold normalisation per dataset: pure string work."""

from __future__ import annotations

import re

# LaTeX commands whose argument is text rather than math, and those of them a unit after a
# number is written in (upright text): the one list equivalence.normalize and the agreement
# suite read.
TEXT_COMMANDS = ("text", "textnormal", "textrm", "textup", "textsf", "texttt", "textbf", "textit",
                 "textmd", "mathrm", "mathbf", "mathit", "mathsf", "mathtt", "mbox", "hbox",
                 "operatorname")
UNIT_COMMANDS = ("text", "textnormal", "textrm", "textup", "mathrm", "mbox", "hbox",
                 "operatorname")


def command_pattern(names) -> str:
  """A regex matching any of the commands `names` (longest first), backslash included."""
  return r"\\(?:" + "|".join(sorted(names, key=len, reverse=True)) + r")(?![a-zA-Z])"


_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOX_BARE = re.compile(r"\\boxed\s+([^\s$]+)")
_ANSWER_IS = re.compile(r"(?:final\s+)?answer\s+is\s*:?\s*(.+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def _brace_content(text: str, open_idx: int) -> str | None:
  """The text inside the brace group opening at text[open_idx] == '{', or None if unbalanced."""
  depth = 0
  for i in range(open_idx, len(text)):
    c = text[i]
    if c == "\\" and i + 1 < len(text) and text[i + 1] in "{}":
      continue
    if c == "{" and (i == 0 or text[i - 1] != "\\"):
      depth += 1
    elif c == "}" and (i == 0 or text[i - 1] != "\\"):
      depth -= 1
      if depth == 0:
        return text[open_idx + 1:i]
  return None


def last_boxed(text: str) -> str | None:
  """Content of the last `\\boxed{...}` / `\\fbox{...}` (nested braces), or `\\boxed 5`."""
  matches = list(_BOX.finditer(text))
  for m in reversed(matches):
    content = _brace_content(text, m.end() - 1)
    if content is not None:
      return content.strip()
  bare = list(_BOX_BARE.finditer(text))
  return bare[-1].group(1).strip() if bare else None


def _clean_tail(s: str) -> str:
  s = s.strip().split("\n")[0].strip()
  if s.startswith("$") and s.count("$") >= 2:
    s = s[1:s.index("$", 1)]
  return s.strip().rstrip(".").strip().strip("$").strip()


def extract_answer(response: str, dataset: str | None = None) -> str | None:
  """The final answer of a response: the last \\boxed{} / \\fbox{}, else "The answer is ...",
  else, for GSM8K-style sets (`dataset="gsm8k"`), the last number. None if there is none."""
  boxed = last_boxed(response)
  if boxed is not None:
    return boxed
  said = list(_ANSWER_IS.finditer(response))
  if said:
    ans = _clean_tail(said[-1].group(1))
    if ans:
      return ans
  if dataset == "gsm8k":
    nums = _NUMBER.findall(response)
    if nums:
      return nums[-1].replace(",", "").rstrip(".")
  return None


def _math_segments(s: str) -> str:
  """'$69$,$84$' -> '69, 84'; '$145$solution:' -> '145'; text without $ is kept as is."""
  segs = re.findall(r"\$([^$]*)\$", s)
  return ", ".join(x.strip() for x in segs) if segs else s.strip()


def _float_text(x: float) -> str:
  return str(int(x)) if float(x).is_integer() else repr(float(x))


def normalize_gold(dataset: str, record: dict) -> str:
  """The gold answer of a raw record of `dataset`, as a string the grader parses.

  gsm8k: the text after '####' (thousands separators dropped); math500: `answer`; math_train:
  the last \\boxed{} of `solution`; gaokao2023en: the math segments of `answer`; olympiadbench:
  the `final_answer` list joined, without `$`; aime24: `answer` as a string; amc23: the float
  `answer` written as an integer when it is one.
  Raises KeyError / ValueError naming the field when the record lacks it.
  """
  if dataset == "gsm8k":
    ans = record["answer"]
    if "####" not in ans:
      raise ValueError("field 'answer' has no '####' final answer")
    return ans.split("####")[-1].strip().replace(",", "")
  if dataset == "math500":
    return str(record["answer"]).strip()
  if dataset == "math_train":
    boxed = last_boxed(record["solution"])
    if boxed is None:
      raise ValueError("field 'solution' has no \\boxed{} answer")
    return boxed
  if dataset == "gaokao2023en":
    return _math_segments(str(record["answer"]))
  if dataset == "olympiadbench":
    fa = record["final_answer"]
    if not isinstance(fa, list) or not fa:
      raise ValueError("field 'final_answer' is not a non-empty list")
    return ", ".join(_math_segments(str(x)) for x in fa)
  if dataset == "aime24":
    return str(record["answer"]).strip()
  if dataset == "amc23":
    return _float_text(record["answer"])
  raise ValueError(f"unknown dataset {dataset!r}")
