"""The tool loop in synchronised rounds against each trajectory on its own (cells run while
others decode, continuations from the trajectory's KV slot), on the built-in sampler, side by
side in one run, on the demo's E-step workload.

  python experiments/train.py --flagfile=experiments/configs/demo.flags --run_dir=/tmp/demo
  python benchmarks/tool_rollout_bench.py --model_dir=/tmp/demo/em/hf_policy \\
      --tokenizer_dir=/tmp/demo/tokenizer

The workload is the demo's EM E-step: `queries` queries of the generated task, each rolled
out k times under each probe (vanilla, code_prefix), T=1, top-p 0.9, max_tokens 96, 4 tool
calls, with the demo's trained policy (which writes code in some answers, so cells run). Each
way runs once to compile, then `repeats` times timed. Printed: trajectories/s, model tokens/s,
prefilled tokens per model token (the sampler's slots count every token they prefill:
prompts, and whole contexts again in rounds or only tool outputs on its own), and how many
trajectories differ between the two (expected: none).
"""

import time

import numpy as np
from absl import app, flags

from autocode_jax.data.datasets import sample_queries
from autocode_jax.models import from_pretrained, load_tokenizer
from autocode_jax.rollout.session import RolloutSettings, open_session
from autocode_jax.rollout.tool_loop import run_tool_loop

_MODEL = flags.DEFINE_string("model_dir", None, "HF export of a policy (a demo run's "
                             "em/hf_policy)", required=True)
_TOKENIZER = flags.DEFINE_string("tokenizer_dir", None, "its tokenizer", required=True)
_QUERIES = flags.DEFINE_integer("queries", 48, "queries (the demo's queries_per_iteration)")
_K = flags.DEFINE_integer("k", 8, "rollouts per query and probe")
_MAX = flags.DEFINE_integer("max_tokens", 96, "tokens per response")
_REPEATS = flags.DEFINE_integer("repeats", 2, "timed runs of each way")
_SLOTS = flags.DEFINE_integer("jax_slots", 1024, "the built-in sampler's decode slots at most")


def main(_):
  tok = load_tokenizer(_TOKENIZER.value)
  model = from_pretrained(_MODEL.value)
  settings = RolloutSettings(jax_slots=_SLOTS.value)
  session = open_session(settings, tok, model.config, template="plain", seed=0, model=model)
  try:
    queries = sample_queries("synthetic", "", _QUERIES.value)
    requests = [session.request(q, probe, 0) for q in queries
                for probe in ("vanilla", "code_prefix")]
    params = session.params(n=_K.value, temperature=1.0, top_p=0.9, max_tokens=_MAX.value)
    engine = session.engine
    print(f"{len(requests) * _K.value} trajectories ({_QUERIES.value} queries x 2 probes x "
          f"k={_K.value}), max_tokens {_MAX.value}, jax_slots {_SLOTS.value}")
    results = {}
    for name, rounds in (("rounds", True), ("own", False)):
      run = lambda: run_tool_loop(engine, session.sandbox, tok, requests, params,
                                  max_tool_calls=4, fence_ids=session.fences, rounds=rounds)
      run()  # compile
      times, prefilled = [], []
      for _ in range(_REPEATS.value):
        before = engine.prefilled_tokens
        start = time.perf_counter()
        trajs = run()
        times.append(time.perf_counter() - start)
        prefilled.append(engine.prefilled_tokens - before)
      results[name] = (trajs, float(np.median(times)), float(np.median(prefilled)))
    base = results["rounds"][1]
    for name, (trajs, dt, pre) in results.items():
      model_tokens = sum(r == "model" for t in trajs for r in t.roles)
      calls = sum(t.num_tool_calls for t in trajs)
      print(f"{name:7s} {dt:7.2f} s  {len(trajs) / dt:7.1f} trajectories/s  "
            f"{model_tokens / dt:8.1f} model tokens/s  {pre / model_tokens:5.2f} prefilled per "
            f"model token  {calls} tool calls  {base / dt:5.2f}x")
    a, b = results["rounds"][0], results["own"][0]
    differ = sum(x.token_ids != y.token_ids or x.roles != y.roles for x, y in zip(a, b))
    print(f"trajectories that differ between the two: {differ} of {len(a)}")
  finally:
    session.close()


if __name__ == "__main__":
  app.run(main)
