#!/usr/bin/env bash
# The main job: the benchmark report of the fused ops against the eager reference on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export TRITON_CACHE_DIR="$PWD/build/triton_cache" TORCHINDUCTOR_CACHE_DIR="$PWD/build/inductor_cache"
exec .venv/bin/python -m benchmarks.report "$@"
