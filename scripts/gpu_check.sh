#!/usr/bin/env bash
# On a machine with a CUDA GPU: set up as the test command does, run the whole test suite on the
# GPU backends (cuda, triton-cuda, the CUDA-graph replay, torch.compile with fresh noise on CUDA),
# then the GPU report: results/gpu_report.md, .json and .png (benchmarks/gpu_report.py).
# Without a GPU: one line, exit status 3, nothing built. Built without the CUDA kernels (no nvcc):
# the Triton backend is checked and the status is 4; a failing test or report makes it non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! nvidia-smi -L 2>/dev/null | grep -q "^GPU "; then
  echo "gpu_check: no CUDA GPU here (nvidia-smi lists none); nothing was built or run"
  exit 3
fi
bash scripts/setup_env.sh
export TRITON_CACHE_DIR="$PWD/build/triton_cache" TORCHINDUCTOR_CACHE_DIR="$PWD/build/inductor_cache"
if ! .venv/bin/python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  echo "gpu_check: nvidia-smi lists a GPU but torch $(.venv/bin/python -c 'import torch; print(torch.__version__)') cannot use it"
  exit 3
fi
status=0
if ! .venv/bin/python -c "import sys, dropgrad_cuda as dg; sys.exit(not dg.cuda_kernels_built())"; then
  echo "gpu_check: dropgrad_cuda was built without its CUDA kernels (no nvcc or CUDA_HOME?): only the Triton backend is checked; exit status 4"
  status=4
fi
# No TRITON_INTERPRET: Triton compiles for the GPU (the interpreter's CPU rows are skipped here;
# the test command runs them).
unset TRITON_INTERPRET
.venv/bin/pytest -q -rs "$@" || status=$?
.venv/bin/python -m benchmarks.gpu_report || status=$?
exit $status
