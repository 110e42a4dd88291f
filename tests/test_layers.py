"""The imports of autocode_jax/ point down: no package imports one on its own level or above it.

From the bottom: the single-file base modules; `models`, `interpreter`, `grading`; `data` (the
generated task included, as one of its registered datasets); `rollout` and `training` (both
read `data`'s records); `em` and `eval`, neither importing the other; `demo`, the embedded
default's driver, on top. Every import counts, those inside functions included. No exceptions.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "autocode_jax"

LEVELS = {
    "files": 0, "flagging": 0, "logs": 0, "ipc": 0, "hostmem": 0,
    "rundir": 1,
    "models": 2, "interpreter": 2, "grading": 2,
    "data": 3,
    "rollout": 4, "training": 4,
    "em": 5, "eval": 5,
    "demo": 6,
}


def package_of(path: pathlib.Path, root: pathlib.Path) -> str:
  """The top-level package (or base module) of autocode_jax that a file belongs to."""
  return path.relative_to(root).parts[0].removesuffix(".py")


def imports(path: pathlib.Path, root: pathlib.Path) -> list[tuple[str, int]]:
  """(package, line) for every autocode_jax package or base module the file imports, at any
  depth of the file (imports inside functions too), in absolute or relative form."""
  tree = ast.parse(path.read_text(), filename=str(path))
  here = path.relative_to(root.parent).parts[:-1]  # the package holding the module
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        parts = alias.name.split(".")
        if parts[0] == root.name and len(parts) > 1:
          found.append((parts[1], node.lineno))
    elif isinstance(node, ast.ImportFrom):
      parts = node.module.split(".") if node.module else []
      if node.level:
        parts = list(here[:len(here) - node.level + 1]) + parts
      if not parts or parts[0] != root.name:
        continue
      if len(parts) > 1:
        found.append((parts[1], node.lineno))
      else:  # from autocode_jax import em, files
        found += [(a.name, node.lineno) for a in node.names if not a.name.startswith("_")]
  return found


def violations(root: pathlib.Path) -> list[str]:
  """'file:line: a imports b (level x -> y)' for each import that does not point down."""
  out = []
  for path in sorted(root.rglob("*.py")):
    if path.parent == root and path.name == "__init__.py":
      continue
    src = package_of(path, root)
    for dst, line in imports(path, root):
      if dst == src:
        continue
      where = f"{path.relative_to(root.parent)}:{line}"
      if src not in LEVELS or dst not in LEVELS:
        unknown = src if src not in LEVELS else dst
        out.append(f"{where}: {src} imports {dst}, and {unknown} has no level in LEVELS")
      elif LEVELS[dst] >= LEVELS[src]:
        out.append(f"{where}: {src} (level {LEVELS[src]}) imports {dst} (level {LEVELS[dst]})")
  return out


def test_every_import_points_down():
  assert len(list(PACKAGE.rglob("*.py"))) > 40  # the walk found the package
  bad = violations(PACKAGE)
  assert not bad, "imports that do not point down:\n" + "\n".join(bad)


def _package(tmp_path, files: dict[str, str]) -> pathlib.Path:
  root = tmp_path / "autocode_jax"
  for name, text in files.items():
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(text)
  return root


@pytest.mark.parametrize("module, text, expected", [
    ("eval/harness.py", "import os\nfrom autocode_jax.em import explore\n",
     "autocode_jax/eval/harness.py:2: eval (level 5) imports em (level 5)"),
    ("grading/grader.py", "def f():\n  from ..rollout import session\n",
     "autocode_jax/grading/grader.py:2: grading (level 2) imports rollout (level 4)"),
    ("data/prompts.py", "from autocode_jax import eval as ev, files\n",
     "autocode_jax/data/prompts.py:1: data (level 3) imports eval (level 5)"),
    ("rollout/session.py", "import autocode_jax.training.step\n",
     "autocode_jax/rollout/session.py:1: rollout (level 4) imports training (level 4)"),
    ("models/hf.py", "from autocode_jax.demo import driver\n",
     "autocode_jax/models/hf.py:1: models (level 2) imports demo (level 6)"),
    ("models/hf.py", "from autocode_jax.extras import x\n",
     "autocode_jax/models/hf.py:1: models imports extras, and extras has no level in LEVELS"),
])
def test_an_import_that_points_up_fails_naming_file_line_and_packages(tmp_path, module, text,
                                                                      expected):
  root = _package(tmp_path, {module: text, "em/explore.py": "from autocode_jax.data import x\n"})
  assert violations(root) == [expected]
