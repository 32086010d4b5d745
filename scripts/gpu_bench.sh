#!/usr/bin/env bash
# The CUDA benches of docs/speed.md in one command, for a lent GPU machine: 6 minutes of time
# limits in all, so that on a 15-minute lease a second run fits after the machine's start.
# Untested on CUDA so far, so every step has its own time limit; a bench's JSON is rewritten after
# each batch size and path, so one stopped by its limit keeps what it measured ("complete": false,
# "pending": what it did not). Under OUT_DIR: one JSON per step, check.jsonl, and every step's
# output in log.txt (the device tool brings back 8 files at most):
#   1. scripts/kernel_bench.py: the FFN op's Triton kernels alone against cuBLAS's dense MLP at the
#      shape's widths, batch 1 and 8, as CUDA-graph replays (a slow kernel shows itself first);
#   2. scripts/gpu_check.py: the compiled path's masks and counters against the eager engine's;
#   3. the Llama-2-7B shape in bf16, batch 1, all paths side by side (--compile): plain HF (eager),
#      hf-static (HF's own static cache + compiled generate), our eager engine and our compiled
#      path, each with dense, skip-all and ffnskip at 5% and 31%, beside the bandwidth bound
#      (--no-overheads: without ffnskip-off and checks-only, two compiles fewer per batch size);
#   4. the same at batch 8, ffnskip at 31% only.
# usage: bash scripts/gpu_bench.sh OUT_DIR      (on the device tool: bash scripts/gpu_bench.sh "$OUT")
# dry run on a CPU: DEVICE=cpu DTYPE=float32 SHAPE=smollm2-135m THIN=--thin SCALE=3 \
#   KERNEL_ARGS="--widths 64,96" TRITON_INTERPRET=1 bash scripts/gpu_bench.sh /tmp/dry
# Needs torch, transformers and triton (run from the repository root; nothing is downloaded).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bash scripts/gpu_bench.sh OUT_DIR}
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-bfloat16}
SHAPE=${SHAPE:-llama-2-7b}
THIN=${THIN:-}
SCALE=${SCALE:-1}  # time limits x SCALE (a CPU dry run needs more)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
LOG=$OUT/log.txt
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > "$LOG" 2>&1 || true
bench() {  # NAME LIMIT_S ARGS...: one bench, its JSON under $OUT, its output in $LOG
  local name=$1 limit=$2
  shift 2
  echo "=== $name" >> "$LOG"
  timeout "$((limit * SCALE))" python3 -m lmeval_ffnskip bench --device "$DEVICE" --dtype "$DTYPE" --new-tokens 32 \
    --reps 3 --json "$OUT/$name.json" "$@" >> "$LOG" 2>&1
  echo "$name: exit $?"
}
echo "=== kernel" >> "$LOG"
timeout "$((60 * SCALE))" python3 scripts/kernel_bench.py --device "$DEVICE" --dtype "$DTYPE" --shape "$SHAPE" \
  ${KERNEL_ARGS:-} --json "$OUT/kernel.json" >> "$LOG" 2>&1
echo "kernel: exit $?"
# the compiled path's decisions against the eager engine's on this device (tiny model)
echo "=== check" >> "$LOG"
timeout "$((60 * SCALE))" python3 scripts/gpu_check.py --device "$DEVICE" > "$OUT/check.jsonl" 2>> "$LOG"
echo "check: exit $? ($(grep -c . "$OUT/check.jsonl") cases)"
bench "$SHAPE-compiled-b1" 150 --shape "$SHAPE" $THIN --batch-sizes 1 --targets 0.05,0.31 --compile --no-overheads
bench "$SHAPE-compiled-b8" 90 --shape "$SHAPE" $THIN --batch-sizes 8 --targets 0.31 --compile --no-overheads
