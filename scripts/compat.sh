#!/usr/bin/env bash
# Tries the package as users get it, each in a fresh venv under build/compat/ (the development
# .venv is untouched):
#   bash scripts/compat.sh wheel            build the wheel, install it with only its declared
#                                           dependencies and run scripts/wheel_smoke.py there
#   bash scripts/compat.sh torch VERSION    build against torch VERSION (CPU kernels, and the
#                                           cuda-emulated backend) and run the CPU test suite
#   bash scripts/compat.sh                  all four: wheel, torch 2.11.0 (the GPU machines'), 2.13.0+cpu, 2.15.0
# torch 2.13.0+cpu comes from this machine's disk, 2.11.0 and 2.15.0 from the registry (about 4 GB each with their
# nvidia wheels). Pytest arguments for the suites go in COMPAT_PYTEST_ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."
TOP="$PWD"
export MAX_JOBS="${MAX_JOBS:-2}" DROPGRAD_NO_CUDA=1 PIP_DISABLE_PIP_VERSION_CHECK=1
PY="${PYTHON:-python3}"
ROOT="$PWD/build/compat"
mkdir -p "$ROOT"

fresh_venv() {  # $1: folder
  rm -rf "$1"
  "$PY" -m venv "$1"
  "$1/bin/pip" install -q --upgrade pip setuptools wheel 2>&1 | grep -v "is ignored" || true
}

source_copy() {  # $1: folder; the committed tree plus the working changes, without builds
  rm -rf "$1"
  mkdir -p "$1"
  tar --exclude=./.venv --exclude=./build --exclude=./results --exclude='*.so' --exclude=./.git -cf - . | tar -xf - -C "$1"
}

wheel() {
  local venv="$ROOT/wheel-venv" src="$ROOT/wheel-src"
  source_copy "$src"
  echo "[wheel] building (CPU kernels; DROPGRAD_NO_CUDA=1)"
  (cd "$src" && "$TOP/.venv/bin/python" -m pip wheel -q --no-build-isolation --no-deps -w "$ROOT/dist" . >/dev/null)
  local whl
  whl=$(ls -t "$ROOT"/dist/dropgrad_cuda-*.whl | head -1)
  echo "[wheel] installing $(basename "$whl") with its declared dependencies into a fresh venv"
  fresh_venv "$venv"
  "$venv/bin/pip" install -q "$whl" 2>&1 | grep -v "is ignored" || true
  "$venv/bin/python" -c "import torch; print('[wheel] torch', torch.__version__)"
  (cd "$ROOT" && "$venv/bin/python" "$TOP/scripts/wheel_smoke.py")
  echo "[wheel] again with numpy (Triton's interpreter needs it)"
  "$venv/bin/pip" install -q numpy
  (cd "$ROOT" && "$venv/bin/python" "$TOP/scripts/wheel_smoke.py")
}

suite() {  # $1: torch version
  local v="$1" venv="$ROOT/torch-$1" src="$ROOT/src-$1"
  echo "[torch $v] fresh venv"
  fresh_venv "$venv"
  PIP_CONSTRAINT=/dev/null "$venv/bin/pip" install -q "torch==$v" numpy ninja pybind11 pytest pytest-benchmark \
    matplotlib tqdm pillow higher==0.2.1 2>&1 | grep -v "is ignored" || true
  "$venv/bin/python" -c "import torch; print('[torch $v] torch', torch.__version__, 'cuda', torch.version.cuda)"
  source_copy "$src"
  echo "[torch $v] building"
  (cd "$src" && "$venv/bin/pip" install -q --no-build-isolation --no-deps -e . 2>&1 | grep -v "is ignored" || true)
  local interp=""
  "$venv/bin/python" -c "import triton" 2>/dev/null && interp=1
  echo "[torch $v] CPU test suite (Triton interpreter: $([ -n "$interp" ] && echo yes || echo "no triton in this torch"))"
  (cd "$src" && TRITON_INTERPRET=${interp:-0} TRITON_CACHE_DIR="$src/build/triton" \
     TORCHINDUCTOR_CACHE_DIR="$src/build/inductor" "$venv/bin/pytest" -q -p no:cacheprovider ${COMPAT_PYTEST_ARGS:-})
}

case "${1:-all}" in
  wheel) wheel ;;
  torch) suite "${2:?usage: compat.sh torch VERSION}" ;;
  all) wheel; suite 2.11.0; suite 2.13.0+cpu; suite 2.15.0 ;;
  *) echo "usage: compat.sh [wheel | torch VERSION]" >&2; exit 2 ;;
esac
