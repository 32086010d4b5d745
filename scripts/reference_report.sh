#!/usr/bin/env bash
# Regenerate the published reference report (reports/reference.html, and reports/reference.png:
# its first screen at 1280 x 900, the summary and the start of the leaderboard) from a real sweep
# of both embedded models on 2 CPU cores: 26-34 minutes from scratch, 59 on a loaded VM
# (docs/results.md, "The reference report"); finished cells are reused.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-reference_out}
export FFNSKIP_DATA_DIR="${FFNSKIP_DATA_DIR:-$(cd .. && pwd)/shared/data}"
python -m lmeval_ffnskip sweep reference --out "$OUT"
python -m lmeval_ffnskip sweep reference_gemma --out "$OUT"
# with the decode-speed-by-model section from the committed shape benches (docs/speed.md)
python -m lmeval_ffnskip report "$OUT" -o reports/reference.html \
  --bench docs/bench/cpu/*.json docs/bench/cpu-thin/llama-2-7b.json docs/bench/h200/llama-2-7b-lockstep.json
python scripts/screenshot.py reports/reference.html reports/reference.png
