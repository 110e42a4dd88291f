"""Trains a math model with AutoCode4Math's EM loop (--algorithm=em) or a baseline (rl, sft).

  python experiments/train.py --flagfile=experiments/configs/debug_cpu.flags

Rerunning the same command resumes the run in --run_dir. Multi-host: pass --distributed on every
host (jax.distributed.initialize runs first; the coordinator flags are needed only where JAX
cannot detect the cluster, e.g. several processes on one machine).
"""

import json
import os
import sys

from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from autocode_jax import hostmem  # noqa: E402

hostmem.keep_freed_memory()  # before numpy and jax start threads: see hostmem

from autocode_jax.em import flags as em_flags  # noqa: E402
from autocode_jax.synthetic import demo as demo_lib  # noqa: E402

em_flags.define_flags()
demo_lib.define_flags(flags.FLAGS)
flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() first (multi-host)")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (with --distributed)")
flags.DEFINE_integer("num_processes", None, "processes in the job (with --distributed)")
flags.DEFINE_integer("process_id", None, "this process's index (with --distributed)")
flags.DEFINE_bool("params_digest", False, "gather the final parameters and record their sha256")
FLAGS = flags.FLAGS
FLAGS.set_default("verbosity", logging.WARNING)  # orbax logs every save at INFO


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  with em_flags.bad_flags_exit("train.py"):
    # Every flag and path checked before any work (the demo builds its tokenizer and data).
    cfg = em_flags.run_config(FLAGS, check_paths=not FLAGS.demo)
    demo = None
    if FLAGS.demo:
      demo = demo_lib.demo_config(FLAGS)
      demo_lib.check(cfg)
  import jax
  if FLAGS.distributed:
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  elif any(FLAGS[f].present for f in ("coordinator_address", "num_processes", "process_id")):
    raise app.UsageError("--coordinator_address/--num_processes/--process_id need --distributed")
  from autocode_jax.em.loop import run
  with em_flags.bad_flags_exit("train.py"):  # some are found once the run dir and data are read
    if demo is not None:
      summary = demo_lib.run_demo(cfg, demo, digest=FLAGS.params_digest)["finals"]
    else:
      summary = run(cfg, digest=FLAGS.params_digest)
  path = os.path.join(cfg.run_dir, f"final.p{jax.process_index()}.json")
  with open(path, "w") as f:
    json.dump(summary, f, indent=1)


if __name__ == "__main__":
  app.run(main)
