"""The embedded demo's comparison over seeds and plain-prompt code shares of the warm start
(EM vs SFT+RL vs SFT, see autocode_jax/demo/driver.py): one Markdown table and one figure.

  python experiments/demo_sweep.py --flagfile=experiments/configs/demo.flags \
      --run_dir=/tmp/autocode_jax/sweep --sweep_seeds=0,1,2 --sweep_code_shares=0.1,0.5

Each (share, seed) is a full demo (about 7 minutes on 2 cores) in run_dir/share<s>_seed<n>;
rerunning the command resumes where it stopped. Writes run_dir/sweep.md, sweep.json, sweep.png.
"""

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from autocode_jax import logs  # noqa: E402
from autocode_jax.em import flags as em_flags  # noqa: E402
from autocode_jax.flagging import ConfigError, bad_flags_exit  # noqa: E402
from autocode_jax.demo import driver as demo_lib  # noqa: E402

em_flags.define_flags()
demo_lib.define_flags(flags.FLAGS)
logs.define_flags()
flags.DEFINE_list("sweep_seeds", ["0", "1", "2"], "run seeds (model init, data order, rollouts)")
flags.DEFINE_list("sweep_code_shares", ["0.1", "0.5"],
                  "plain-prompt code shares of the warm-start corpus")
FLAGS = flags.FLAGS


def _numbers(name: str, kind) -> list:
  """The non-empty list flag `name` as numbers of `kind`; ConfigError naming it otherwise."""
  try:
    out = [kind(s) for s in FLAGS[name].value]
  except ValueError:
    raise ConfigError(name, f"expected a comma-separated list of numbers "
                      f"(got {FLAGS[name].value!r})") from None
  if not out:
    raise ConfigError(name, "needs at least one value")
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logs.configure_from_flags()
  with bad_flags_exit("demo_sweep.py"):
    if not FLAGS.demo:
      raise ConfigError("demo", "the sweep runs the demo: pass --demo (as demo.flags does)")
    cfg = em_flags.run_config(FLAGS, check_paths=False)
    demo = demo_lib.demo_config(FLAGS)
    demo_lib.check(cfg)
    seeds = _numbers("sweep_seeds", int)
    shares = _numbers("sweep_code_shares", float)
    if not all(0 <= s <= 1 for s in shares):
      raise ConfigError("sweep_code_shares", f"shares must be in [0, 1] (got {shares})")
  demo_lib.run_sweep(cfg, demo, seeds, shares)


if __name__ == "__main__":
  app.run(main)
