#!/usr/bin/env bash
# The test suite from a fresh clone: sets up .venv, builds, then runs pytest (extra args pass through).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export TRITON_CACHE_DIR="$PWD/build/triton_cache" TORCHINDUCTOR_CACHE_DIR="$PWD/build/inductor_cache"
# Triton kernels run on CPU tensors through Triton's interpreter (no GPU on these machines);
# the ahead-of-time compile test unsets it for its own subprocess.
export TRITON_INTERPRET=1
exec .venv/bin/pytest -q "$@"
