"""Sandboxed execution of model-written Python: `Sandbox`, `ExecResult`. Standard library only."""

from autocode_jax.interpreter.sandbox import STATUSES, ExecResult, Sandbox, SandboxError
