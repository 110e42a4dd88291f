"""A rollout session: what training's E-step and evaluation both roll out with, and nothing of
either. One frozen settings record (RolloutSettings, held by em.config.RunConfig and
eval.harness.EvalConfig as their `rollout` field; its fields are flags of the same names) makes
the session's engine (the built-in JAX sampler or vLLM), its sandbox and its grader pool; the
session adds the tokenizer's stop and fence tokens and the prompt-building step, and grades
trajectories under their source dataset's rules.

  session = open_session(cfg.rollout, tokenizer, model_config, template=..., seed=...,
                         model=... | model_dir=...)
  trajs = session.roll_out([session.request(q, "vanilla", iteration)], session.params(...),
                           grade={q.id: q})  # graded as each ends; or session.grade(trajs, ...)
  session.close()
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
from typing import Sequence

from autocode_jax.data.datasets import grading_rules
from autocode_jax.data.prompts import CODE_PREFIX, build_prompt
from autocode_jax.data.records import Query
from autocode_jax.flagging import check_choices, option, requirer
from autocode_jax.rollout.engine import SamplingParams, derive_seed
from autocode_jax.rollout.tool_loop import Request, Trajectory, fence_token_ids, run_tool_loop

ENGINES = ("jax", "vllm")


@dataclasses.dataclass(frozen=True)
class RolloutSettings:
  """How rollouts are made, whatever they are for: the engine and its vLLM settings, the code
  executions per response, the sandbox, and the grader's time limit.

  vllm_kv_cache_mb: an explicit KV-cache size (0: vLLM sizes it from
  vllm_gpu_memory_utilization, which on its CPU build is a share of host memory minus what the
  process already holds); vllm_enforce_eager: no CUDA graphs or compilation (faster start,
  slower decoding)."""
  engine: str = option("jax", "rollout engine: jax (built-in sampler) or vllm", choices=ENGINES)
  max_tool_calls: int = option(4, "code executions per response at most")
  sandbox_workers: int = option(2, "sandbox server processes")
  sandbox_timeout_s: float = option(5.0, "seconds per execution")
  sandbox_memory_mb: int = option(1024, "address-space limit per execution")
  max_output_chars: int = option(512, "interpreter output shown to the model at most")
  grade_timeout_s: float = option(5.0, "seconds per answer comparison")
  jax_slots: int = option(256, "built-in sampler: decode slots at most (rows beyond them wait "
                               "for a finished row's slot)")
  jax_chunk: int = option(32, "built-in sampler: decode steps per host round trip")
  cell_wait: float = option(0.0, "before decoding on, wait for the cells in flight up to this "
                            "share of the engine's last call (0: never; on a CPU host, where "
                            "cells and decoding share the cores, 1 is faster)")
  vllm_tensor_parallel: int = option(1, "vLLM tensor_parallel_size")
  vllm_gpu_memory_utilization: float = option(0.5, "vLLM gpu_memory_utilization")
  vllm_max_model_len: int = option(4096, "vLLM max_model_len")
  vllm_enforce_eager: bool = option(False, "vLLM enforce_eager (no graph capture or compilation)")
  vllm_kv_cache_mb: int = option(0, "vLLM KV-cache size in MiB (0: from "
                                    "vllm_gpu_memory_utilization)")

  def __post_init__(self):
    check_choices(self)
    need = requirer(self)
    need(self.max_tool_calls >= 0, "max_tool_calls", "must be >= 0")
    for f in ("sandbox_workers", "sandbox_memory_mb", "max_output_chars", "vllm_tensor_parallel",
              "vllm_max_model_len", "sandbox_timeout_s", "grade_timeout_s", "jax_slots",
              "jax_chunk"):
      need(getattr(self, f) > 0, f, "must be positive")
    need(self.vllm_kv_cache_mb >= 0, "vllm_kv_cache_mb", "must be >= 0")
    need(self.cell_wait >= 0, "cell_wait", "must be >= 0")
    need(0 < self.vllm_gpu_memory_utilization <= 1, "vllm_gpu_memory_utilization",
         "must be in (0, 1]")


@dataclasses.dataclass
class RolloutSession:
  """engine (jax_sampler.JaxSampler or vllm_engine.VllmEngine), sandbox, tokenizer, grader (a
  grading.GraderPool); template (chat | plain) and seed of the prompts and rollouts;
  max_tool_calls and grade_timeout_s (from the settings); stop_ids: the tokens that end a
  response (`stop_ids`); fences: the tokens that may complete a code fence (tool_loop)."""
  engine: object
  sandbox: object
  tokenizer: object
  grader: object
  template: str
  seed: int
  max_tool_calls: int
  grade_timeout_s: float
  stop_ids: tuple[int, ...]
  fences: tuple[int, ...]
  cell_wait: float = 0.0
  _grading: concurrent.futures.ThreadPoolExecutor | None = dataclasses.field(
      default=None, init=False, repr=False)

  def params(self, *, n: int, temperature: float, top_p: float, max_tokens: int,
             banned_token_ids: tuple[int, ...] = ()) -> SamplingParams:
    """Sampling parameters that stop at the session's stop tokens."""
    return SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens, n=n,
                          stop_token_ids=self.stop_ids, banned_token_ids=banned_token_ids)

  def request(self, q: Query, probe: str, iteration: int, mode: str = "auto") -> Request:
    """q's prompt in a prompt mode with a probe; its seed is a function of (session seed,
    iteration, query id, probe, mode) only, so it does not depend on what else is rolled out."""
    prompt = build_prompt(q.problem, mode, probe, self.template, self.tokenizer)
    prefix = self.probe_prefix_ids() if prompt.prefix else ()
    return Request(q.id, tuple(self.tokenizer.encode(prompt.text)), prefix, probe,
                   seed=derive_seed(self.seed, iteration, q.id, probe, mode), mode=mode)

  def probe_prefix_ids(self) -> tuple[int, ...]:
    """The code_prefix probe's token ids: what its rollouts start with (tokenised on its own,
    after the prompt)."""
    return tuple(self.tokenizer.encode(CODE_PREFIX))

  def roll_out(self, requests: Sequence[Request], params: SamplingParams,
               max_tool_calls: int | None = None,
               grade: dict[str, Query] | None = None) -> list[Trajectory]:
    """The requests through the tool loop (max_tool_calls: the session's unless given).
    grade: the queries by the requests' query ids; each trajectory is then graded (as `grade`
    does) as soon as it ends, in the grader's processes while the others roll out, and comes
    back with its reward."""
    calls = self.max_tool_calls if max_tool_calls is None else max_tool_calls
    loop = functools.partial(run_tool_loop, self.engine, self.sandbox, self.tokenizer, requests,
                             params, max_tool_calls=calls, fence_ids=self.fences,
                             cell_wait=self.cell_wait)
    if grade is None:
      return loop()
    missing = sorted({r.query_id for r in requests} - grade.keys())
    if missing:
      raise ValueError(f"RolloutSession.roll_out: grade has no query for {missing[:5]}")
    if self._grading is None:
      self._grading = concurrent.futures.ThreadPoolExecutor(self.grader.num_workers, "grading")
    pending = []
    try:
      trajs = loop(on_done=lambda t: pending.append(
          self._grading.submit(self.grade, [t], {t.query_id: grade[t.query_id]})))
    except BaseException:
      for f in pending:
        f.cancel()
      raise
    for f in pending:
      f.result()
    return trajs

  def grade(self, trajs: Sequence[Trajectory], queries: dict[str, Query]) -> None:
    """Sets each trajectory's reward (0/1), grading per source dataset's extraction rules, and
    its grade_failure when the grader timed out or failed (the reward is then 0)."""
    from autocode_jax.grading.grader import grade_results
    by_source = collections.defaultdict(list)
    for t in trajs:
      by_source[grading_rules(queries[t.query_id].source)].append(t)
    for dataset, ts in by_source.items():
      grades = grade_results([t.text for t in ts], [queries[t.query_id].gold for t in ts],
                             dataset, timeout_s=self.grade_timeout_s, pool=self.grader)
      for t, g in zip(ts, grades):
        t.reward, t.grade_failure = float(g.correct), g.failure_kind

  def roll_out_modes(self, queries: Sequence[Query], modes: Sequence[str], *, max_tokens: int,
                     n: int = 1, temperature: float = 0.0) -> list[Trajectory]:
    """`n` rollouts per (query, prompt mode), mode by mode, graded: greedy by default, or n
    samples at `temperature` (top-p 1). Each trajectory carries its mode."""
    if n > 1 and temperature == 0:
      raise ValueError(f"roll_out_modes: n={n} greedy samples would all be equal; set a "
                       "temperature")
    reqs = [self.request(q, "vanilla", 0, mode=m) for m in modes for q in queries]
    return self.roll_out(reqs, self.params(n=n, temperature=temperature, top_p=1.0,
                                           max_tokens=max_tokens),
                         grade={q.id: q for q in queries})

  def close(self) -> None:
    if self._grading is not None:
      self._grading.shutdown(wait=True)
    self.sandbox.close()
    self.grader.close()


def open_session(settings: RolloutSettings, tokenizer, model_config, *, template: str,
                 seed: int, dtype: str = "float32", model=None, mesh=None, pad_id: int = 0,
                 model_dir: str = "", vllm_sleep: bool = False) -> RolloutSession:
  """The session of `settings`: its sandbox and grader processes, and its engine: with
  engine=jax a JaxSampler over `model` (an NNX model; `mesh`: its device mesh, None for a
  local copy), with engine=vllm a VllmEngine serving the HuggingFace directory `model_dir` in
  `dtype` (vllm_sleep: sleep mode on, so a trainer can free its memory)."""
  from autocode_jax.grading.pool import GraderPool
  from autocode_jax.interpreter.sandbox import Sandbox
  sandbox = Sandbox(num_workers=settings.sandbox_workers, timeout_s=settings.sandbox_timeout_s,
                    memory_mb=settings.sandbox_memory_mb,
                    max_output_chars=settings.max_output_chars)
  grader = GraderPool(timeout_s=settings.grade_timeout_s)
  try:
    if settings.engine == "jax":
      from autocode_jax.rollout.jax_sampler import JaxSampler
      if model is None:
        raise ValueError("open_session: engine=jax needs the model")
      engine = JaxSampler(model, mesh=mesh, pad_id=pad_id, max_slots=settings.jax_slots,
                          chunk=settings.jax_chunk)
    else:
      engine = vllm_engine(settings, model_dir, dtype=dtype, seed=seed, sleep=vllm_sleep)
  except BaseException:
    sandbox.close()
    grader.close()
    raise
  return RolloutSession(engine, sandbox, tokenizer, grader, template, seed,
                        settings.max_tool_calls, settings.grade_timeout_s,
                        stop_ids(tokenizer, model_config, template), fence_token_ids(tokenizer),
                        settings.cell_wait)


def vllm_engine(settings: RolloutSettings, model_dir: str, *, dtype: str, seed: int,
                sleep: bool = False):
  """A VllmEngine on a HuggingFace directory, from the settings' vllm_* fields."""
  from autocode_jax.rollout.vllm_engine import VllmEngine
  if not model_dir:
    raise ValueError("open_session: engine=vllm needs model_dir")
  extra = ({"kv_cache_memory_bytes": settings.vllm_kv_cache_mb << 20}
           if settings.vllm_kv_cache_mb else {})
  return VllmEngine(model_dir, dtype=dtype, seed=seed,
                    tensor_parallel_size=settings.vllm_tensor_parallel,
                    gpu_memory_utilization=settings.vllm_gpu_memory_utilization,
                    max_model_len=settings.vllm_max_model_len, enable_sleep_mode=sleep,
                    enforce_eager=settings.vllm_enforce_eager, **extra)


def stop_ids(tokenizer, model_config, template: str) -> tuple[int, ...]:
  """Tokens that end a response: the model's and the tokenizer's EOS, and <|im_end|> under the
  chat template."""
  ids = set(model_config.eos_token_ids)
  if tokenizer.eos_token_id is not None:
    ids.add(tokenizer.eos_token_id)
  if template == "chat":
    end = tokenizer.encode("<|im_end|>")
    if len(end) == 1:
      ids.add(end[0])
  return tuple(sorted(ids))


def end_id(tokenizer, template: str, stops: tuple[int, ...]) -> int:
  """The token that ends a written (SFT) response: <|im_end|> under chat, else the first stop."""
  if template == "chat":
    end = tokenizer.encode("<|im_end|>")
    if len(end) == 1:
      return end[0]
  return stops[0]
