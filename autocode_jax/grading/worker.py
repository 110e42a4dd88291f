"""A grader worker process: `python -m autocode_jax.grading.worker MEMORY_MB`. Answers
{"fn": "equivalent" | "parses" | "plain_math_verify", "args": [...]} with
{"ok": bool, "value": ...}."""

import resource
import sys

from autocode_jax import ipc


def main() -> None:
  memory_mb = int(sys.argv[1])
  if memory_mb:
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb * 2**20,) * 2)
  sys.setrecursionlimit(10_000)
  stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
  try:
    from autocode_jax.grading import equivalence
    import math_verify  # noqa: F401  (warm: the first call should not pay the import)
  except BaseException as e:  # noqa: BLE001
    ipc.send(stdout, {"ready": False, "error": f"{type(e).__name__}: {e}"})
    return
  ipc.send(stdout, {"ready": True})
  funcs = {"equivalent": equivalence.equivalent, "parses": equivalence.parses,
           "plain_math_verify": equivalence.plain_math_verify}
  while (req := ipc.recv(stdin)) is not None:
    try:
      answer = {"ok": True, "value": funcs[req["fn"]](*req["args"])}
    except BaseException as e:  # noqa: BLE001 - a grading failure is an answer, not a crash
      answer = {"ok": False, "value": f"{type(e).__name__}: {e}"[:500]}
    ipc.send(stdout, answer)


if __name__ == "__main__":
  main()
