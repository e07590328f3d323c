#!/usr/bin/env bash
# The test suite from a fresh clone: sets up .venv, builds, then runs pytest (extra args pass
# through): the whole suite at this CPU's own SIMD level, then the tests marked `numerics` (their
# values come from ATen, oneDNN, MKL, NNPACK or numpy, whose kernels differ between CPUs) again as
# on other CPUs (a baseline level with NNPACK off, and an AVX2 machine), so a tolerance that holds
# only on one machine's path fails here and not on the next machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export TRITON_CACHE_DIR="$PWD/build/triton_cache" TORCHINDUCTOR_CACHE_DIR="$PWD/build/inductor_cache"
# Triton kernels run on CPU tensors through Triton's interpreter (no GPU on these machines);
# the ahead-of-time compile test unsets it for its own subprocess.
export TRITON_INTERPRET=1
.venv/bin/pytest -q "$@"
# Then the numerics tests under each CPU dropgrad_cuda.examples.readme.IMITATED_CPUS imitates.
status=0
for cpu in baseline avx2; do
  echo "== the numerics tests again as on another CPU: $cpu"
  (eval "$(.venv/bin/python -m dropgrad_cuda.examples.readme --cpu-env $cpu)" && exec .venv/bin/pytest -q -m numerics "$@") \
    || { s=$?; [ "$s" -eq 5 ] || status=$s; }  # 5: the arguments selected no numerics test
done
exit "$status"
