"""Quiet logs: the libraries underneath (absl, orbax, JAX, vLLM, transformers) print warnings
and errors only, unless a run asks for their INFO lines with --verbose (or absl's -v / -v=N).

An entry point calls `define_flags()` with its other flags and `configure_from_flags()` first
thing in main, after absl has parsed the flags (absl's app.run sets its own verbosity then, so
a default set before it does not hold) and before vLLM or transformers are imported (their
levels come from the environment).

Around a quiet run, `divert(path)` sends what the libraries report while failing to a log file
instead of the terminal: their ERROR records and the tracebacks their threads print (a failed
checkpoint write prints one per writer thread), so that the run ends with the one line of
rundir.errors_exit; warnings stay on the terminal, and an error in our own code still prints
its traceback there once the run unwinds."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading

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


def verbose_from_flags(fv: flags.FlagValues = flags.FLAGS) -> bool:
  """--verbose, or absl's -v >= 0 given on the command line."""
  return fv["verbose"].value or (fv["verbosity"].present and fv["verbosity"].value >= 0)


def configure_from_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """configure() from --verbose, or from absl's -v where given on the command line."""
  explicit = fv["verbosity"].present
  configure(verbose_from_flags(fv), fv["verbosity"].value if explicit else None)


_OURS = os.path.dirname(os.path.abspath(__file__)) + os.sep  # autocode_jax/


_LOG_FORMAT = logging.Formatter("%(levelname)s %(asctime)s %(pathname)s:%(lineno)d] %(message)s")


class _LibraryErrorsTo(logging.Filter):
  """Diverts ERROR records from library code (outside autocode_jax) to `log`."""

  def __init__(self, log):
    super().__init__()
    self.log = log

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.ERROR or record.pathname.startswith(_OURS):
      return True
    _write(self.log, _LOG_FORMAT.format(record) + "\n")
    return False


def _write(log, text: str) -> None:
  try:
    log.write(text)
    log.flush()
  except (OSError, ValueError):  # on a full disk: the run's one terminal line names it
    pass


_TRACEBACK = "Traceback (most recent call last):"
# Lines that open a traceback block: the traceback itself, or the header Python's thread and
# unraisable hooks print just before one.
_OPENS = (_TRACEBACK, "Exception in thread", "Exception ignored in")
# Lines between the tracebacks of a chain.
_CHAIN = ("During handling of the above exception", "The above exception was the direct cause")


class _Diverter(io.TextIOBase):
  """sys.stderr during a quiet run: a traceback block (from `Traceback (most recent call
  last):`, or the header of a thread's or an unraisable exception, to its exception line, with
  the lines that chain tracebacks) goes to `log`, every other line to `terminal`. Each thread
  has its own state: threads that fail together print their tracebacks interleaved."""

  def __init__(self, terminal, log):
    self.terminal, self.log = terminal, log
    self._lock = threading.Lock()
    self._state = threading.local()

  def _mine(self):
    st = self._state
    if not hasattr(st, "pending"):
      st.pending, st.in_traceback, st.after = "", False, False
    return st

  def write(self, text: str) -> int:
    st = self._mine()
    st.pending += text
    *lines, st.pending = st.pending.split("\n")
    with self._lock:
      for line in lines:
        self._line(st, line)
      if st.pending and not st.in_traceback and not any(
          o.startswith(st.pending) for o in _OPENS):  # a progress bar's \r update: now
        st.after = False
        self._show(st.pending)
        st.pending = ""
    return len(text)

  def _line(self, st, line: str) -> None:
    if line.startswith(_OPENS):
      st.in_traceback = True
    if st.in_traceback:
      _write(self.log, line + "\n")
      if line[:1] not in ("", " ", "\t") and not line.startswith(_OPENS + _CHAIN):
        st.in_traceback, st.after = False, True  # its exception line ends the block
    elif st.after and (not line.strip() or line.startswith(_CHAIN)):
      _write(self.log, line + "\n")  # between the tracebacks of a chain
    else:
      st.after = False
      self._show(line + "\n")

  def _show(self, text: str) -> None:
    self.terminal.write(text)
    self.terminal.flush()

  def flush(self) -> None:
    st = self._mine()
    with self._lock:
      if st.pending and not st.in_traceback:
        self._show(st.pending)
        st.pending = ""
      self.terminal.flush()

  @property
  def encoding(self) -> str:
    return getattr(self.terminal, "encoding", None) or "utf-8"

  def isatty(self) -> bool:
    return self.terminal.isatty()

  def fileno(self) -> int:
    return self.terminal.fileno()


@contextlib.contextmanager
def divert(path: str):
  """While the block runs: library ERROR records and printed tracebacks go to `path`
  (appended; dropped when it cannot be written), the rest of stderr to the terminal."""
  try:
    log = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed below)
  except OSError:
    log = io.StringIO()
  terminal = sys.stderr
  handlers = list(logging.getLogger().handlers)
  filt = _LibraryErrorsTo(log)
  diverter = _Diverter(terminal, log)
  for h in handlers:
    h.addFilter(filt)
  sys.stderr = diverter
  try:
    yield
  finally:
    diverter.flush()
    sys.stderr = terminal
    for h in handlers:
      h.removeFilter(filt)
    with contextlib.suppress(OSError):
      log.close()
