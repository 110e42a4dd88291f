"""The tool loop in synchronised rounds against each trajectory on its own (its cells run while
the others decode; it continues from its KV: the built-in sampler's slot, vLLM's prefix cache),
side by side in one run, per engine and workload. Printed per way: wall time, trajectories/s,
model tokens/s (tokens of role `model`: in `longtail` the scripted cells' too), prompt tokens
computed per model token (the built-in sampler counts every token its slots prefill: prompts,
whole contexts again in rounds, or only tool outputs on their own; vLLM counts the prompt
tokens its prefix cache did not serve) and, for vLLM, those the cache served; the engine's idle
share (the share of the wall time outside the engine's decode and prefill calls: waiting on
cells, host work), tool calls, and how many trajectories differ from the round-based loop's
(expected: none).

  python benchmarks/tool_rollout_bench.py                         # long tail, a CPU
  python benchmarks/tool_rollout_bench.py --preset=qwen2.5-0.5b --dtype=bfloat16 --rows=256 \\
      --jax_slots=64                                              # long tail, a GPU
  python benchmarks/tool_rollout_bench.py --workloads=demo --model_dir=RUN/em/hf_policy \\
      --tokenizer_dir=RUN/tokenizer                               # a demo run's E-step

Workloads:
- `longtail`: `rows` trajectories of a random-weight model (`preset`; vocabulary widened to the
  Qwen2.5 tokenizer's) whose turns are scripted, so that lengths and tool calls are spread as a
  math policy's are, while every token is really decoded by the engine and every cell really
  runs in the sandbox. Per trajectory: a prompt of 64-256 random tokens; a response length L
  (the model's tokens, its cells' included) drawn from a log-normal of median `median` and
  sigma `sigma`, clipped to [16, max_tokens - 64]; a number of tool calls c with P(c = 0..4) =
  `call_mix` (at most one per 64 tokens of L); L less the cells' tokens split into c + 1
  sampled segments at uniform random points. After segment r < c the model "writes" a cell:
  its tokens (~42) are put in after the sampled ones (appended with the tool output, so they
  are prefilled, not decoded; the cell ends with a fence token, as a sampled one does) and the
  cell runs: a busy loop of d seconds of CPU, d log-normal of
  median `cell_median_s`, sigma 1.2, clipped to [1 ms, 2 s] (most cells are arithmetic, a few
  load sympy or loop), printing one number. The last segment ends the trajectory at its
  length (as an EOS would). Fence and stop tokens are banned from sampling, so the random
  model never ends a segment on its own. The same trajectories are made both ways (seeds per
  trajectory and segment, as the tool loop always gives them).
- `demo`: the demo's EM E-step: `queries` queries of the generated task, each rolled out k times
  under each probe (vanilla, code_prefix), T=1, top-p 0.9, max_tokens 96, 4 tool calls, with a
  demo run's trained policy (which writes code in some answers, so cells run). Needs
  --model_dir and --tokenizer_dir of a demo run.

Each way runs once to compile, then `repeats` times timed (the median is printed); on vLLM the
prefix cache is emptied before each timed run, so that it serves only what that run computed.
"""

import os
import tempfile
import time

import numpy as np
from absl import app, flags

from autocode_jax.rollout.engine import Completion

_WORKLOADS = flags.DEFINE_list("workloads", ["longtail"], "longtail and/or demo")
_ENGINES = flags.DEFINE_list("engines", ["jax"], "jax and/or vllm")
_REPEATS = flags.DEFINE_integer("repeats", 1, "timed runs of each way")
_SLOTS = flags.DEFINE_integer("jax_slots", 16, "the built-in sampler's decode slots at most")
_CHUNK = flags.DEFINE_integer("jax_chunk", 32, "the built-in sampler's steps per chunk")
_WAITS = flags.DEFINE_list("cell_waits", ["0", "1"], "the per-trajectory loop's cell_wait "
                           "settings to run (one row each)")
_WORKERS = flags.DEFINE_integer("sandbox_workers", 2, "sandbox processes")
# longtail
_PRESET = flags.DEFINE_string("preset", "tiny-qwen2", "longtail: model preset (random weights)")
_DTYPE = flags.DEFINE_string("dtype", "float32", "longtail: parameter and compute dtype")
_ROWS = flags.DEFINE_integer("rows", 64, "longtail: trajectories")
_LT_MAX = flags.DEFINE_integer("lt_max_tokens", 1024, "longtail: max_tokens per response")
_MEDIAN = flags.DEFINE_float("median", 256.0, "longtail: median response length (tokens)")
_SIGMA = flags.DEFINE_float("sigma", 0.8, "longtail: log-normal sigma of response lengths")
_MIX = flags.DEFINE_list("call_mix", ["0.35", "0.3", "0.2", "0.1", "0.05"],
                         "longtail: P(0, 1, 2, 3, 4 tool calls)")
_CELL = flags.DEFINE_float("cell_median_s", 0.02, "longtail: median CPU seconds of a cell")
_SEED = flags.DEFINE_integer("seed", 0, "longtail: workload seed")
# demo
_MODEL = flags.DEFINE_string("model_dir", None, "demo: HF export of a policy (a demo run's "
                             "em/hf_policy)")
_TOKENIZER = flags.DEFINE_string("tokenizer_dir", None, "tokenizer (default: the shared "
                                 "Qwen2.5 tokenizer for longtail; the demo run's for demo)")
_QUERIES = flags.DEFINE_integer("queries", 48, "demo: queries (queries_per_iteration)")
_K = flags.DEFINE_integer("k", 8, "demo: rollouts per query and probe")

_SHARED_TOKENIZER = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                 "tokenizers", "qwen2.5", "derived")
_CELL_CODE = ("import time\nt = time.process_time()\nwhile time.process_time() - t < {d:.4f}:\n"
              "  pass\nprint({v})")


class _Timed:
  """A batch interface that counts the seconds spent inside the engine (`busy_s`)."""

  def __init__(self, inner):
    self.inner, self.busy_s = inner, 0.0
    self.synchronous = getattr(inner, "synchronous", False)

  def __getattr__(self, name):
    return getattr(self.inner, name)

  @property
  def busy(self):
    return self.inner.busy

  def run(self):
    start = time.perf_counter()
    out = self.inner.run()
    self.busy_s += time.perf_counter() - start
    return out


class ScriptedTurns(_Timed):
  """A batch interface (slots or rounds) whose trajectories follow a plan: trajectory i's
  segment r samples exactly plan[i][r][0] tokens (its budget; nothing else stops it), and is
  followed by cell tokens plan[i][r][1] (none after the last segment). The cell tokens go in
  with the next continuation, so the KV holds what a policy that wrote them would hold."""

  def __init__(self, inner, plan):
    super().__init__(inner)
    self.plan = plan
    self.segment: dict = {}
    self.cell: dict = {}

  def submit(self, rid, prompt, *, seed, sample=0, budget, fences=False):
    self.segment[rid] = 0
    self.inner.submit(rid, prompt, seed=seed, sample=sample,
                      budget=min(budget, self.plan[rid][0][0]), fences=False)

  def resume(self, rid, tokens, *, seed, sample=0, budget, fences=False):
    r = self.segment[rid]
    self.inner.resume(rid, self.cell.pop(rid, ()) + tuple(tokens), seed=seed, sample=sample,
                      budget=min(budget, self.plan[rid][r][0]), fences=False)

  def run(self):
    scripted = []
    for rid, comp in super().run():
      r = self.segment[rid]
      n, cell = self.plan[rid][r]
      if cell and len(comp.token_ids) == n:
        self.cell[rid] = cell
        self.segment[rid] = r + 1
        comp = Completion(comp.token_ids + cell, comp.logprobs + (0.0,) * len(cell), "eos")
      scripted.append((rid, comp))
    return scripted


def longtail_plan(tok, n: int, max_tokens: int):
  """Per trajectory: its prompt and [(segment length, cell tokens)] (see the module doc)."""
  rng = np.random.RandomState(_SEED.value)
  mix = np.array([float(x) for x in _MIX.value])
  mix = mix / mix.sum()
  vocab = tok.vocab_size
  prompts, plans = [], []
  for _ in range(n):
    prompts.append(tuple(int(t) for t in rng.randint(0, min(vocab, 150000),
                                                         rng.randint(64, 257))))
    length = int(np.clip(round(_MEDIAN.value * np.exp(_SIGMA.value * rng.randn())), 16,
                         max_tokens - 64))
    calls = min(int(rng.choice(len(mix), p=mix)), length // 64)
    cells = []
    for _ in range(calls):
      d = float(np.clip(_CELL.value * np.exp(1.2 * rng.randn()), 0.001, 2.0))
      code = _CELL_CODE.format(d=d, v=int(rng.randint(0, 10**6)))
      cells.append(tuple(tok.encode(f"\n```python\n{code}\n```")))
    room = length - sum(map(len, cells))
    cuts = np.sort(rng.choice(np.arange(1, max(room, calls + 1)), calls, replace=False))
    seg = np.diff(np.concatenate([[0], cuts, [max(room, calls + 1)]]))
    plans.append([(int(s), c) for s, c in zip(seg, cells)] + [(int(seg[-1]), ())])
  return prompts, plans


def ways():
  """(name, rounds, cell_wait) of each way to run: the rounds first (the reference)."""
  return [("rounds", True, 0.0)] + [(f"own wait={w}", False, float(w)) for w in _WAITS.value]


def run_way(engine, sandbox, tok, requests, params, fences, rounds, cell_wait, plan, repeats):
  from autocode_jax.rollout.tool_loop import run_tool_loop
  wrappers = []

  def wrap(batch):
    wrappers.append(ScriptedTurns(batch, plan) if plan is not None else _Timed(batch))
    return wrappers[-1]

  def go():
    wrappers.clear()
    return run_tool_loop(engine, sandbox, tok, requests, params, max_tool_calls=4,
                         fence_ids=fences, rounds=rounds, cell_wait=cell_wait, wrap=wrap)

  go()  # compile
  rows = []
  for _ in range(repeats):
    if hasattr(engine, "llm"):  # vLLM: contexts computed by an earlier run are not cached
      engine.llm.reset_prefix_cache()
    before = [getattr(engine, a, 0) for a in ("prefilled_tokens", "cached_tokens")]
    start = time.perf_counter()
    trajs = go()
    dt = time.perf_counter() - start
    pre, cached = (getattr(engine, a, 0) - b
                   for a, b in zip(("prefilled_tokens", "cached_tokens"), before))
    rows.append((dt, pre, cached, sum(w.busy_s for w in wrappers), trajs))
  rows.sort(key=lambda r: r[0])
  return rows[len(rows) // 2]


def report(title, runs):
  """Prints the table of `runs` ((way, run_way's result) pairs, the rounds first), a row as
  each way finishes (a long run shows its figures as it goes)."""
  print(title)
  print(f"  {'way':14s} {'time':>8s} {'traj/s':>8s} {'model tok/s':>11s} {'prefill/tok':>11s} "
        f"{'cached/tok':>10s} {'idle':>6s} {'calls':>6s} {'ratio':>6s} {'differ':>7s}",
        flush=True)
  base = None
  for name, (dt, pre, cached, busy, trajs) in runs:
    model = sum(r == "model" for t in trajs for r in t.roles)
    calls = sum(t.num_tool_calls for t in trajs)
    if base is None:
      base, ref = dt, trajs
    differ = sum(a.token_ids != b.token_ids or a.roles != b.roles for a, b in zip(ref, trajs))
    pre_s = f"{pre / model:11.2f}" if pre else f"{'-':>11s}"
    cached_s = f"{cached / model:10.2f}" if cached else f"{'-':>10s}"
    print(f"  {name:14s} {dt:7.2f}s {len(trajs) / dt:8.2f} {model / dt:11.1f} {pre_s} {cached_s} "
          f"{1 - busy / dt:6.1%} {calls:6d} {base / dt:5.2f}x {differ:4d}/{len(trajs)}",
          flush=True)


def longtail(engines):
  import jax
  from autocode_jax.interpreter import Sandbox
  from autocode_jax.models import init_model, load_tokenizer, preset, save_pretrained
  from autocode_jax.rollout import JaxSampler
  from autocode_jax.rollout.engine import SamplingParams
  from autocode_jax.rollout.tool_loop import Request, fence_token_ids
  tok = load_tokenizer(_TOKENIZER.value or _SHARED_TOKENIZER)
  cfg = preset(_PRESET.value, param_dtype=_DTYPE.value, dtype=_DTYPE.value)
  cfg = cfg.replace(vocab_size=max(cfg.vocab_size, tok.vocab_size))
  model = init_model(cfg)
  fences = fence_token_ids(tok)
  prompts, plan = longtail_plan(tok, _ROWS.value, _LT_MAX.value)
  requests = [Request(str(i), p, seed=i) for i, p in enumerate(prompts)]
  stop = tuple(t for t in (tok.eos_token_id, tok.pad_token_id) if t is not None)
  params = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=_LT_MAX.value,
                          stop_token_ids=stop, banned_token_ids=tuple(fences) + stop)
  lengths = [sum(s for s, _ in p) for p in plan]
  calls = [len(p) - 1 for p in plan]
  print(f"device: {jax.device_count()}x {jax.devices()[0].device_kind}; {_PRESET.value} "
        f"(vocab {cfg.vocab_size}, {_DTYPE.value}); {_ROWS.value} trajectories, max_tokens "
        f"{_LT_MAX.value}; sampled tokens median {np.median(lengths):.0f} mean "
        f"{np.mean(lengths):.0f} max {max(lengths)}; tool calls {sum(calls)} "
        f"({np.bincount(calls, minlength=5).tolist()} trajectories with 0..4); cell CPU median "
        f"{_CELL.value}s; {_WORKERS.value} sandbox workers; jax_slots {_SLOTS.value}")
  with Sandbox(num_workers=_WORKERS.value, timeout_s=30.0) as sandbox:
    for name in engines:
      if name == "jax":
        engine = JaxSampler(model, max_slots=_SLOTS.value, chunk=_CHUNK.value)
      else:
        engine = _vllm(model, tok, save_pretrained)
      report(f"longtail, engine {name}:",
             ((w, run_way(engine, sandbox, tok, requests, params, fences, rounds, wait, plan,
                          _REPEATS.value)) for w, rounds, wait in ways()))


def _vllm(model, tok, save_pretrained):
  from autocode_jax.rollout.vllm_engine import VllmEngine
  d = os.path.join(tempfile.mkdtemp(), "policy")
  save_pretrained(model, d)
  return VllmEngine(d, dtype=_DTYPE.value, max_model_len=2048, enforce_eager=False,
                    kv_cache_memory_bytes=1 << 30)


def demo(engines):
  from autocode_jax.data.datasets import sample_queries
  from autocode_jax.models import from_pretrained, load_tokenizer
  from autocode_jax.rollout.session import RolloutSettings, open_session
  if not _MODEL.value or not _TOKENIZER.value:
    raise app.UsageError("--workloads=demo needs --model_dir and --tokenizer_dir of a demo run")
  tok = load_tokenizer(_TOKENIZER.value)
  model = from_pretrained(_MODEL.value)
  for name in engines:
    settings = RolloutSettings(engine=name, jax_slots=_SLOTS.value, jax_chunk=_CHUNK.value,
                               sandbox_workers=_WORKERS.value, vllm_kv_cache_mb=1024,
                               vllm_max_model_len=model.config.max_position_embeddings)
    session = open_session(settings, tok, model.config, template="plain", seed=0, model=model,
                           model_dir=_MODEL.value)
    try:
      queries = sample_queries("synthetic", "", _QUERIES.value)
      requests = [session.request(q, probe, 0) for q in queries
                  for probe in ("vanilla", "code_prefix")]
      params = session.params(n=_K.value, temperature=1.0, top_p=0.9, max_tokens=96)
      report(f"demo E-step ({len(requests) * _K.value} trajectories: {_QUERIES.value} queries "
             f"x 2 probes x k={_K.value}, max_tokens 96), engine {name}:",
             ((w, run_way(session.engine, session.sandbox, tok, requests, params,
                          session.fences, rounds, wait, None, _REPEATS.value))
              for w, rounds, wait in ways()))
    finally:
      session.close()


def main(_):
  for w in _WORKLOADS.value:
    if w not in ("longtail", "demo"):
      raise app.UsageError(f"--workloads: unknown workload {w!r} (longtail, demo)")
  for e in _ENGINES.value:
    if e not in ("jax", "vllm"):
      raise app.UsageError(f"--engines: unknown engine {e!r} (jax, vllm)")
  if "longtail" in _WORKLOADS.value:
    longtail(_ENGINES.value)
  if "demo" in _WORKLOADS.value:
    demo(_ENGINES.value)


if __name__ == "__main__":
  app.run(main)
