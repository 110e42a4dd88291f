"""A deterministic synthetic train batch and D_train, and the M-step run by the kill/resume test."""

import sys

import numpy as np

from autocode_jax.data.dtrain import TrainRecord


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


def record(**fields) -> TrainRecord:
  """A D_train record with the fields a test leaves out filled in (all response tokens `m`,
  log-probs 0, reward and advantage 0, group = query_id)."""
  n = len(fields.get("token_ids", ()))
  base = dict(query_id="q", probe="vanilla", iteration=0, label=0, reward=0.0, prompt_ids=(),
              token_ids=(), roles="m" * n, logprobs=[0.0] * n, advantage=0.0)
  base.update(fields)
  base.setdefault("group", base["query_id"])
  return TrainRecord(**base)


def dtrain_records(n=8, groups=3, seed=0, vocab=1000):
  """A D_train of n trajectories in `groups` queries, with tool tokens and decision fields."""
  r = np.random.default_rng(seed)
  out = []
  for i in range(n):
    g, m = i % groups, int(r.integers(4, 9))
    prompt = np.random.default_rng([seed, g]).integers(0, vocab, 3 + g).tolist()
    roles = "m" * m + "tt" + "m" * 2
    out.append(record(query_id=f"q{g}", prompt_ids=prompt,
                      token_ids=r.integers(0, vocab, len(roles)).tolist(), roles=roles,
                      logprobs=(-np.abs(r.normal(size=len(roles))) - 5.5).tolist(),
                      advantage=float(r.normal()), decision_ids=[11, 12],
                      s_star=[1 - 0.3 * g, 0.3 * g]))
  return out


def resumable_run(ckpt_dir: str, out_path: str, tokenizer_dir: str) -> None:
  """The M-step as train.py runs it (em.mstep.run_mstep on an em.policy.Policy, the latest
  checkpoint restored first, one saved every 2 steps) over a fixed D_train, 3 epochs of 3
  steps; prints `step s loss l` per step and saves the final parameters to out_path."""
  import jax

  from autocode_jax.em import mstep
  from autocode_jax.em.config import RunConfig
  from autocode_jax.em.policy import Policy
  from autocode_jax.models.tokenizer import load_tokenizer
  from autocode_jax.training.checkpoint import Checkpointer
  from autocode_jax.training.optimizers import OptimizerConfig

  cfg = RunConfig(run_dir=ckpt_dir, model_preset="tiny-qwen2", tokenizer_dir=tokenizer_dir,
                  mesh_fsdp=1, train_batch_size=4, micro_batch_size=2, m_step_epochs=3,
                  length_multiple=16, save_every=2, optimizer=OptimizerConfig(learning_rate=1e-3))
  policy = Policy.build(cfg, load_tokenizer(tokenizer_dir))
  ckpt = Checkpointer(ckpt_dir, save_every=cfg.save_every, keep=2)
  if ckpt.latest_step() is not None:
    policy.state = ckpt.restore(None, policy.state)
  records = dtrain_records(n=10)
  behaviour = [np.asarray(r.logprobs, np.float32) for r in records]
  mstep.run_mstep(policy, records, behaviour, 0, 0, ckpt,
                  lambda s, m: print(f"step {s - 1} loss {m['loss']:.6f}", flush=True))
  ckpt.close()
  np.savez(out_path, *[np.asarray(x) for x in jax.tree.leaves(policy.state.params)])


if __name__ == "__main__":
  resumable_run(sys.argv[1], sys.argv[2], sys.argv[3])
