"""Quiet logs: the libraries underneath (absl, orbax, JAX, vLLM, transformers) print warnings
and errors only, unless a run asks for their INFO lines with --verbose (or absl's -v / -v=N).

An entry point calls `define_flags()` with its other flags and `configure_from_flags()` first
thing in main, after absl has parsed the flags (absl's app.run sets its own verbosity then, so
a default set before it does not hold) and before vLLM or transformers are imported (their
levels come from the environment)."""

from __future__ import annotations

import logging
import os

from absl import flags
from absl import logging as absl_logging

# Loggers that report routine work at INFO: every checkpoint save, compilation cache use,
# engine start-up.
LIBRARY_LOGGERS = ("absl", "orbax", "jax", "vllm", "transformers", "etils")


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  flags.DEFINE_bool("verbose", False, "also print the libraries' INFO lines (checkpoint saves, "
                    "engine start-up, ...)", flag_values=fv)


class _NoTraceback(logging.Filter):
  """Quiet mode: a library's warning or error is one line; its traceback only with --verbose
  (a failed checkpoint write would print one per writer thread, while the run itself ends with
  one line naming the cause: rundir.errors_exit)."""

  def filter(self, record: logging.LogRecord) -> bool:
    record.exc_info, record.exc_text, record.stack_info = None, None, None
    return True


_FILTER = _NoTraceback()


def configure(verbose: bool = False, absl_verbosity: int | None = None) -> None:
  """INFO from every library with `verbose`, else WARNING and above, one line each (a user's
  environment settings for vLLM and transformers win). absl_verbosity: the value of absl's own
  -v, kept when given."""
  level = logging.INFO if verbose else logging.WARNING
  name = logging.getLevelName(level)
  os.environ.setdefault("VLLM_LOGGING_LEVEL", name)
  os.environ.setdefault("TRANSFORMERS_VERBOSITY", name.lower())
  if absl_verbosity is None:
    absl_verbosity = absl_logging.INFO if verbose else absl_logging.WARNING
  absl_logging.set_verbosity(absl_verbosity)
  root = logging.getLogger()
  root.setLevel(level)
  for logger in LIBRARY_LOGGERS:
    logging.getLogger(logger).setLevel(level)
  for handler in root.handlers:  # absl's, installed by app.run
    if verbose:
      handler.removeFilter(_FILTER)
    else:
      handler.addFilter(_FILTER)


def configure_from_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """configure() from --verbose, or from absl's -v where given on the command line."""
  explicit = fv["verbosity"].present
  verbose = fv["verbose"].value or (explicit and fv["verbosity"].value >= 0)
  configure(verbose, fv["verbosity"].value if explicit else None)
