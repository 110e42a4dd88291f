"""A deterministic synthetic train batch, and a resumable run used by the kill/resume test."""

import sys

import numpy as np


def make_batch(b=8, t=12, seed=0, vocab=512):
  """Rows right-padded; `model` tokens from position 4 on, with two `tool` tokens (6, 7) that are
  in no mask; and decision rows for three queries."""
  r = np.random.RandomState(seed)
  tokens = r.randint(0, vocab, (b, t)).astype(np.int32)
  attention = np.ones((b, t), np.float32)
  attention[1, 9:] = 0
  policy = np.zeros((b, t), np.float32)
  policy[:, 4:] = 1
  policy *= attention
  policy[:, 6:8] = 0
  # Decision rows: three queries (rows 0-2, contexts of 3-5 tokens + a 2-token prefix), the
  # other rows empty, so that some micro-batches hold no decision.
  td = 8
  dec_tokens = np.zeros((b, td), np.int32)
  dec_attention = np.zeros((b, td), np.float32)
  dec_mask = np.zeros((b, td), np.float32)
  for j, ctx in enumerate((3, 4, 5)):
    dec_tokens[j, :ctx + 2] = r.randint(0, vocab, ctx + 2)
    dec_attention[j, :ctx + 2] = 1
    dec_mask[j, ctx:ctx + 2] = 1
  s1 = np.zeros(b, np.float32)
  s1[:3] = (0.9, 0.2, 0.5)
  return {"tokens": tokens, "attention_mask": attention, "policy_mask": policy,
          "old_logprobs": (-np.abs(r.randn(b, t)) - 5.5).astype(np.float32),
          "advantages": r.randn(b).astype(np.float32),
          "decision_tokens": dec_tokens, "decision_attention": dec_attention,
          "decision_mask": dec_mask, "decision_s1": s1}


TOOL_POSITIONS = (6, 7)


def resumable_run(ckpt_dir: str, out_path: str, num_steps: int) -> None:
  import jax
  from flax import nnx

  from autocode_jax.models import init_model, preset
  from autocode_jax.training.checkpoint import Checkpointer
  from autocode_jax.training.loop import fit
  from autocode_jax.training.optimizers import OptimizerConfig, build_optimizer
  from autocode_jax.training.step import LossConfig, init_train_state, make_train_step

  graphdef, params = nnx.split(init_model(preset("tiny-qwen2"), seed=0))
  opt, sched = build_optimizer(OptimizerConfig(learning_rate=1e-3), params)
  state, _ = init_train_state(params, opt)
  step = make_train_step(graphdef, opt, sched, LossConfig(), micro_batch=4)
  ck = Checkpointer(ckpt_dir, save_every=2, keep=2)
  state = fit(state, step, lambda s: make_batch(seed=s), num_steps, ck,
              lambda s, m: print(f"step {s} loss {float(m['loss']):.6f}", flush=True))
  ck.close()
  np.savez(out_path, *[np.asarray(x) for x in jax.tree.leaves(state.params)])


if __name__ == "__main__":
  resumable_run(sys.argv[1], sys.argv[2], int(sys.argv[3]))
