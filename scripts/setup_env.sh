#!/usr/bin/env bash
# Creates .venv with the pinned dependencies and builds dropgrad_cuda into it (editable).
# Idempotent: a second run only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
export MAX_JOBS="${MAX_JOBS:-2}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}"
export TORCH_EXTENSIONS_DIR="$PWD/build/torch_extensions"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# grep may find nothing to print; a failing pip still fails the script (pipefail).
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt 2>&1 | { grep -v "is ignored" || true; }
.venv/bin/python -c "import torch; assert torch.__version__.startswith('2.14.1'), torch.__version__"
.venv/bin/python -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e . 2>&1 \
  | { grep -v "is ignored" || true; }
.venv/bin/python -c "import dropgrad_cuda as dg; print('dropgrad_cuda built; CUDA kernels:', dg.cuda_kernels_built())"
