#!/usr/bin/env bash
# One GPU call: the project's train-step and rollout benchmarks beside the HuggingFace + PyTorch
# peer figures (../shared/bench/peer_hf_torch.py) on the same card, each under its own timeout.
#   OUT=/tmp/out bash benchmarks/gpu_suite.sh        (on the device machine: PYTHONPATH=.)
# All of it takes longer than one device call allows (10 min): name a part with SUITE, e.g.
#   SUITE="rollout slots tool_rollout" OUT=/tmp/out bash benchmarks/gpu_suite.sh
set -u
OUT=${OUT:-/tmp/gpu_suite}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-.} XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.85}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
python -c "import jax, flax, optax, sys; print(sys.version.split()[0], jax.__version__, flax.__version__, optax.__version__, jax.devices())" > "$OUT/stack.txt" 2>&1
SUITE=${SUITE:-rollout slots tool_rollout train_step peer}
run() {  # name, seconds, command...
  local name=$1 secs=$2; shift 2
  case " $SUITE " in *" $name "*) ;; *) return ;; esac
  local t0=$(date +%s)
  timeout "$secs" "$@" > "$OUT/$name.log" 2>&1
  echo "$name rc=$? $(( $(date +%s) - t0 ))s" >> "$OUT/summary.txt"
}
run rollout 120 python benchmarks/rollout_bench.py
run slots 140 python benchmarks/slot_bench.py --slots=16,32,64
run tool_rollout 200 python benchmarks/tool_rollout_bench.py --preset=qwen2.5-0.5b --dtype=bfloat16 --rows=256 --jax_slots=64 --cell_waits=0,1
run train_step 120 python benchmarks/train_step_bench.py
run peer 200 python "${PEER:-../shared/bench/peer_hf_torch.py}" --seq 1024 --batch 8 --gen_batches 64,256 --new 256 --json "$OUT/peer.json"
cat "$OUT/summary.txt"
for f in rollout slots tool_rollout train_step; do
  [ -f "$OUT/$f.log" ] && grep -h -v "^I[0-9]\|^W[0-9]" "$OUT/$f.log" | tail -10
done
[ -f "$OUT/peer.log" ] && tail -5 "$OUT/peer.log"
