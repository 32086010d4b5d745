#!/usr/bin/env bash
# The CUDA shape benches of docs/speed.md in one command, for a lent GPU machine (about 5 minutes
# on an H200 for the eager runs): every shipped shape in bf16, batch 1 and 8, each config decoded in
# lockstep; then the Llama-2-7B shape once more with --compile, both paths side by side (eager and
# compiled rows in one JSON; untested on CUDA: its compile time there is not known).
# usage: bash scripts/gpu_bench.sh OUT_DIR      (on the device tool: bash scripts/gpu_bench.sh "$OUT")
# Needs only torch and transformers (run from the repository root; nothing is downloaded).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bash scripts/gpu_bench.sh OUT_DIR}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
for shape in llama-2-7b llama-3.2-1b qwen2.5-0.5b smollm2-135m; do
  python3 -m lmeval_ffnskip bench --shape "$shape" --device cuda --dtype bfloat16 --batch-sizes 1,8 \
    --targets 0.05,0.25,0.3,0.5 --methods ffnskip,static --new-tokens 32 --reps 3 --lockstep \
    --json "$OUT/$shape.json" 2>&1 | grep -v "batch sizes" | tee "$OUT/$shape.log"
done
python3 -m lmeval_ffnskip bench --shape llama-2-7b --device cuda --dtype bfloat16 --batch-sizes 1,8 \
  --targets 0.05,0.3 --methods ffnskip,static --new-tokens 32 --reps 3 --compile \
  --json "$OUT/llama-2-7b-compiled.json" 2>&1 | grep -v "batch sizes" | tee "$OUT/llama-2-7b-compiled.log"
