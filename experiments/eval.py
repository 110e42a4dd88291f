"""Evaluates a HuggingFace checkpoint on the benchmarks in the prompt modes cot / code / auto:
Pass@1 (greedy; AIME24 and AMC23 the mean of 64 samples at T=0.6), the union bound, the CoT/code
selection accuracy and the code-invocation rate; JSON, Markdown and PNG in --out_dir.

  python experiments/eval.py --model_dir=runs/em1/hf_policy --out_dir=runs/em1/eval
"""

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from autocode_jax import hostmem  # noqa: E402

hostmem.keep_freed_memory()  # before numpy and jax start threads: see hostmem

from autocode_jax import flagging, logs  # noqa: E402
from autocode_jax.eval import harness  # noqa: E402

flagging.define_flags(harness.EvalConfig)
logs.define_flags()
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logs.configure_from_flags()
  with flagging.bad_flags_exit("eval.py"):
    cfg = flagging.from_flags(harness.EvalConfig, FLAGS)
    harness.validate_paths(cfg)
  harness.evaluate(cfg)
  with open(os.path.join(cfg.out_dir, "summary.md")) as f:
    print(f.read(), end="")


if __name__ == "__main__":
  app.run(main)
