#!/usr/bin/env bash
# The test suite from a fresh clone: sets up .venv, builds, then runs pytest (extra args pass
# through) twice: the whole suite at this CPU's own SIMD level, then the tests marked `numerics`
# (their values come from ATen, oneDNN, MKL or numpy, whose SIMD paths differ between CPUs) at a
# baseline level every x86-64 CPU shares, so a tolerance that holds only on one machine's path
# fails here and not on the next machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export TRITON_CACHE_DIR="$PWD/build/triton_cache" TORCHINDUCTOR_CACHE_DIR="$PWD/build/inductor_cache"
# Triton kernels run on CPU tensors through Triton's interpreter (no GPU on these machines);
# the ahead-of-time compile test unsets it for its own subprocess.
export TRITON_INTERPRET=1
.venv/bin/pytest -q "$@"
echo "== the numerics tests again at the baseline SIMD level (dropgrad_cuda.examples.readme.BASELINE_ENV)"
status=0
(eval "$(.venv/bin/python -m dropgrad_cuda.examples.readme --baseline-env)" && exec .venv/bin/pytest -q -m numerics "$@") \
  || status=$?
[ "$status" -eq 5 ] && status=0  # the arguments selected no numerics test
exit "$status"
