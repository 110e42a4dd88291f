"""Trains a math model with AutoCode4Math's EM loop (--algorithm=em) or a baseline (rl, sft).

  python experiments/train.py --flagfile=experiments/configs/debug_cpu.flags

Rerunning the same command resumes the run in --run_dir. Multi-host: pass --distributed on every
host (jax.distributed.initialize runs first; the coordinator flags are needed only where JAX
cannot detect the cluster, e.g. several processes on one machine).
"""

import contextlib
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from autocode_jax import hostmem  # noqa: E402

hostmem.keep_freed_memory()  # before numpy and jax start threads: see hostmem

from autocode_jax import logs, rundir  # noqa: E402
from autocode_jax.demo import driver as demo_lib  # noqa: E402
from autocode_jax.em import flags as em_flags  # noqa: E402
from autocode_jax.files import write_json  # noqa: E402
from autocode_jax.flagging import bad_flags_exit  # noqa: E402

em_flags.define_flags()
demo_lib.define_flags(flags.FLAGS)
logs.define_flags()
flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() first (multi-host)")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (with --distributed)")
flags.DEFINE_integer("num_processes", None, "processes in the job (with --distributed)")
flags.DEFINE_integer("process_id", None, "this process's index (with --distributed)")
flags.DEFINE_bool("params_digest", False, "gather the final parameters and record their sha256")
flags.DEFINE_bool("dry_run", False, "print the per-device memory plan (abstract state, train step "
                  "and behaviour pass compiled ahead of time, vLLM's share) and exit: 0 if it "
                  "fits, 1 if not; nothing is allocated or written")
flags.DEFINE_float("device_memory_gib", 80.0, "with --dry_run: memory of each device, GiB")
flags.DEFINE_integer("dry_run_devices", 0, "with --dry_run: devices to plan for (0: the mesh's "
                     "size); simulated CPU devices where fewer real ones exist")
flags.DEFINE_integer("dry_run_length", 0, "with --dry_run: train row length (0: the longest the "
                     "run can make)")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logs.configure_from_flags()
  with bad_flags_exit("train.py"):
    # Every flag and path checked before any work (the demo builds its tokenizer and data).
    cfg = em_flags.run_config(FLAGS, check_paths=not FLAGS.demo, plan_only=FLAGS.dry_run)
    demo = None
    if FLAGS.demo:
      demo = demo_lib.demo_config(FLAGS)
      demo_lib.check(cfg)
  if FLAGS.dry_run:
    with bad_flags_exit("train.py"):
      sys.exit(dry_run(cfg))
  from autocode_jax.em import plan
  env = plan.apply_memory_env(cfg)  # before JAX's backends start: see em.plan
  if env:
    print("memory: " + " ".join(f"{k}={v}" for k, v in env.items()), flush=True)
  import jax
  if FLAGS.distributed:
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  elif any(FLAGS[f].present for f in ("coordinator_address", "num_processes", "process_id")):
    raise app.UsageError("--coordinator_address/--num_processes/--process_id need --distributed")
  from autocode_jax.em.loop import run
  # Some bad flags are found once the run dir and data are read; a held run dir, bad data and a
  # full disk end the run with one line (rundir.errors_exit).
  verbose = logs.verbose_from_flags(FLAGS)
  with bad_flags_exit("train.py"), rundir.errors_exit("train.py", cfg.run_dir, verbose):
    plan.check_engine_devices(cfg, jax.devices()[0].platform, jax.local_device_count(),
                              FLAGS.distributed)
    with rundir.hold(cfg.run_dir, jax.process_index()), (  # before the run writes anything
        contextlib.nullcontext() if verbose else logs.divert(
            os.path.join(cfg.run_dir, f"libraries.p{jax.process_index()}.log"))):
      if demo is not None:
        summary = demo_lib.run_demo(cfg, demo, digest=FLAGS.params_digest)["finals"]
      else:
        summary = run(cfg, digest=FLAGS.params_digest)
      write_json(os.path.join(cfg.run_dir, f"final.p{jax.process_index()}.json"), summary)


def dry_run(cfg) -> int:
  """Prints the memory plan of cfg (em.plan) and returns the exit status: 0 fits, 1 does not."""
  if FLAGS.distributed:
    raise app.UsageError("--dry_run plans from one process: drop --distributed")
  mesh = (cfg.mesh_data, cfg.mesh_fsdp, cfg.mesh_tensor)
  n = FLAGS.dry_run_devices or (0 if -1 in mesh else mesh[0] * mesh[1] * mesh[2])
  if not n:
    raise app.UsageError("--dry_run with a -1 mesh axis: give --dry_run_devices")
  os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # compiles only: allocate nothing
  import jax
  if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    jax.config.update("jax_num_cpu_devices", n)
  from autocode_jax.em import plan
  from autocode_jax.models.tokenizer import load_tokenizer
  real = jax.devices()
  simulated = len(real) < n or real[0].platform == "cpu"
  devices = (jax.devices("cpu") if simulated else real)[:n]
  if len(devices) < n:
    raise flags.ValidationError(f"--dry_run_devices={n}: only {len(devices)} CPU devices could "
                                "be made")
  try:
    p = plan.memory_plan(cfg, load_tokenizer(cfg.tokenizer_dir or cfg.init_from),
                         FLAGS.device_memory_gib, devices, FLAGS.dry_run_length, simulated)
  except plan.PlanError as e:
    raise flags.ValidationError(f"--dry_run_devices={n}: {e}") from None
  print(p.text())
  env = plan.memory_env(cfg)
  if env:
    print("the run sets, before JAX starts: " + " ".join(f"{k}={v}" for k, v in env.items()))
  if not p.fits:
    print("train.py: the plan does not fit: " + "; ".join(p.shortfalls), file=sys.stderr)
  return 0 if p.fits else 1


if __name__ == "__main__":
  app.run(main)
