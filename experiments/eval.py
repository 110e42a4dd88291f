"""Evaluates a HuggingFace checkpoint on the benchmarks in the prompt modes cot / code / auto:
Pass@1 (greedy; AIME24 and AMC23 the mean of 64 samples at T=0.6), the union bound, the CoT/code
selection accuracy and the code-invocation rate; JSON, Markdown and PNG in --out_dir.

  python experiments/eval.py --model_dir=runs/em1/hf_policy --out_dir=runs/em1/eval
"""

import os
import sys

from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from autocode_jax import hostmem  # noqa: E402

hostmem.keep_freed_memory()  # before numpy and jax start threads: see hostmem

from autocode_jax.em import config as config_lib  # noqa: E402
from autocode_jax.em import flags as em_flags  # noqa: E402
from autocode_jax.eval import harness  # noqa: E402

HELP = {
    "model_dir": "HuggingFace model directory to evaluate", "out_dir": "where results go",
    "tokenizer_dir": "tokenizer directory (default: model_dir)",
    "template": "chat (instruct models) or plain (base models)",
    "benchmarks": "benchmarks to evaluate", "data_dir": "directory laid out like shared/data",
    "limit": "queries per benchmark, a stratified sample (0: all)",
    "modes": "prompt modes (cot, code, auto)",
    "sampled_benchmarks": "benchmarks scored as the mean over --samples samples",
    "samples": "samples per query on sampled_benchmarks",
    "sample_temperature": "temperature of those samples",
    "max_tokens": "response tokens at most", "max_tool_calls": "code executions per response",
    "seed": "seed of the query sample and the rollouts", "param_dtype": "parameter dtype",
    "dtype": "compute dtype", "mesh_data": "data mesh axis", "mesh_fsdp": "FSDP mesh axis",
    "mesh_tensor": "tensor mesh axis", "engine": "jax (built-in sampler) or vllm",
    "vllm_tensor_parallel": "vLLM tensor_parallel_size",
    "vllm_gpu_memory_utilization": "vLLM gpu_memory_utilization",
    "vllm_max_model_len": "vLLM max_model_len", "vllm_enforce_eager": "vLLM enforce_eager",
    "vllm_kv_cache_mb": "vLLM KV-cache MiB (0: from the memory share)",
    "sandbox_workers": "sandbox server processes", "sandbox_timeout_s": "seconds per execution",
    "sandbox_memory_mb": "address-space limit per execution",
    "max_output_chars": "interpreter output shown at most",
    "grade_timeout_s": "seconds per answer comparison",
}
em_flags.define_dataclass_flags(harness.EvalConfig, HELP, flags.FLAGS,
                                enums={"engine": config_lib.ENGINES,
                                       "template": config_lib.TEMPLATES})
FLAGS = flags.FLAGS
FLAGS.set_default("verbosity", logging.WARNING)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  with em_flags.bad_flags_exit("eval.py"):
    cfg = harness.EvalConfig(**em_flags.dataclass_kwargs(harness.EvalConfig, FLAGS))
    harness.validate_paths(cfg)
  harness.evaluate(cfg)
  with open(os.path.join(cfg.out_dir, "summary.md")) as f:
    print(f.read(), end="")


if __name__ == "__main__":
  app.run(main)
