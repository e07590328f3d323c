#!/usr/bin/env bash
# The GPU check: build, the GPU tests, then the GPU report (benchmarks/gpu_report.py).
#
#   bash scripts/gpu_check.sh [--python PY] [--quick] [--out DIR] [--dry-run]
#
# --python PY  use that interpreter and the torch it has (a GPU machine's or a cluster's own
#              environment): no venv, no download, nothing installed or removed there; the
#              extension is built in place in this checkout. Default: .venv/bin/python, set up
#              as the test command does (scripts/setup_env.sh).
# --quick      the plan for a short GPU lease (budget 480 s on a 16-core H100, build included):
#              a build for the GPU present only (a dry run: sm_90) without the CUDA emulator,
#              the GPU tests only (-m gpu: the cuda and triton-cuda rows, CUDA-graph replay,
#              torch.compile on CUDA), then the report at 16M/64M float32 and 64M bfloat16.
#              Without it: the whole suite, then the full report.
# --out DIR    where the report (gpu_report.md/.json/.png), the tests' JUnit XML and the whole log
#              (gpu_check.log) go; default results/. Report rows are written as they finish.
# --dry-run    everything that needs no GPU: the interpreter and torch checks, the build, every
#              Triton kernel compiled ahead of time by that interpreter's Triton for the archs
#              built (its API drifts between releases: 3.6 has no tl.to_tensor), the collection of
#              the selected tests and the plan with each stage's budget.
#
# Each stage runs in its own time box and prints its wall time; one that fails or runs out of
# time is reported and the next still runs. Exit status: 0 all passed; 1 a stage failed or timed
# out; 2 bad arguments or an unusable interpreter/torch; 3 no CUDA GPU here (one line, nothing
# built); 4 all passed but the extension was built without its CUDA kernels (no nvcc: Triton only).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
PY="" QUICK=0 OUT="results" DRY=0

usage() { echo "usage: bash scripts/gpu_check.sh [--python PY] [--quick] [--out DIR] [--dry-run]" >&2; }
die() { echo "gpu_check: $1" >&2; exit "${2:-2}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --python) [ $# -ge 2 ] || { usage; exit 2; }; PY="$2"; shift 2 ;;
    --python=*) PY="${1#*=}"; shift ;;
    --out) [ $# -ge 2 ] || { usage; exit 2; }; OUT="$2"; shift 2 ;;
    --out=*) OUT="${1#*=}"; shift ;;
    --quick) QUICK=1; shift ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage; die "unknown argument: $1" ;;
  esac
done

mkdir -p "$OUT" 2>/dev/null && [ -d "$OUT" ] && [ -w "$OUT" ] || die "--out $OUT is not a writable folder"
OUT="$(cd "$OUT" && pwd)"

has_gpu() { nvidia-smi -L 2>/dev/null | grep -q "^GPU "; }
if [ -z "$PY" ]; then  # the development venv, set up (and built) as the test command does
  if [ "$DRY" = 0 ] && ! has_gpu; then
    echo "gpu_check: no CUDA GPU here (nvidia-smi lists none); nothing was built or run"
    exit 3
  fi
  bash scripts/setup_env.sh >/dev/null || die "scripts/setup_env.sh failed"
  PY=.venv/bin/python
  BUILD_IN_PLACE=0
else
  command -v "$PY" >/dev/null 2>&1 || die "--python $PY: no such interpreter"
  BUILD_IN_PLACE=1
fi

# The torch range the package declares (setup.py install_requires), and what this interpreter has.
RANGE=$(grep -o '"torch>=[0-9.]*,<[0-9.]*"' setup.py | tr -d '"')
CHECK=$("$PY" - "$RANGE" <<'EOF' 2>&1
import sys
try:
    import torch
except Exception as e:
    print(f"gpu_check: {sys.executable} cannot import torch ({type(e).__name__}: {e})")
    sys.exit(2)
low, high = (tuple(int(x) for x in v.split(".")) for v in sys.argv[1][len("torch>="):].split(",<"))
have = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
try:
    import triton
    tv = triton.__version__
except Exception:
    tv = "not installed"
print(f"gpu_check: {sys.executable}: Python {sys.version.split()[0]}, torch {torch.__version__}, "
      f"CUDA {torch.version.cuda}, Triton {tv}")
if not low[:2] <= have < high[:2]:
    print(f"gpu_check: torch {torch.__version__} is outside the supported range {sys.argv[1]}")
    sys.exit(2)
if torch.version.cuda is None:
    print(f"gpu_check: torch {torch.__version__} is a CPU-only build; the GPU check needs a CUDA build of torch")
    sys.exit(2)
sys.exit(0 if torch.cuda.is_available() else 3)
EOF
)
rc=$?
if [ "$rc" = 3 ] && [ "$DRY" = 0 ]; then
  echo "gpu_check: no CUDA GPU here (torch.cuda.is_available() is False); nothing was built or run"
  exit 3
fi
if [ "$rc" != 0 ] && [ "$rc" != 3 ]; then
  echo "$CHECK" | tail -1 >&2
  exit 2
fi

exec > >(tee "$OUT/gpu_check.log") 2>&1  # from here on everything also goes to the log
echo "$CHECK"
echo "gpu_check: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), out $OUT"

export TRITON_CACHE_DIR="$ROOT/build/triton_cache" TORCHINDUCTOR_CACHE_DIR="$ROOT/build/inductor_cache"
export TORCH_EXTENSIONS_DIR="$ROOT/build/torch_extensions" PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
unset TRITON_INTERPRET  # Triton compiles for the GPU; the interpreter's CPU rows are CI's

if [ "$QUICK" = 1 ]; then
  TEST_ARGS=(-m gpu) B_BUILD=100 B_TESTS=200 B_REPORT=180 REPORT_ARGS=(--quick)
  # Only what a GPU run uses: the CUDA kernels for the GPU present (a dry run: the Hopper chips
  # these leases lend), no CUDA emulator (the CPU suite's backend; -m gpu selects none of its
  # rows), host C++ at -O1 (setup.py, DROPGRAD_QUICK_BUILD). A fresh clone's dry run built in 51 s
  # at MAX_JOBS=2 on a 2-core AMD EPYC (AVX2), the slowest machine met, in the torch 2.11 look-alike.
  [ -n "${TORCH_CUDA_ARCH_LIST:-}" ] || TORCH_CUDA_ARCH_LIST=$("$PY" -c \
    "import torch; print('%d.%d' % torch.cuda.get_device_capability() if torch.cuda.is_available() else '9.0')")
  export DROPGRAD_QUICK_BUILD=1
else
  TEST_ARGS=() B_BUILD=600 B_TESTS=1800 B_REPORT=1200 REPORT_ARGS=()
fi
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}"
BUDGET=$((B_BUILD + B_TESTS + B_REPORT))
FAILED=0

stage() {  # name, budget (s), command...: runs it in its time box, reports status and wall time
  local name="$1" budget="$2" t0 rc
  shift 2
  echo "== gpu_check: stage $name (budget ${budget} s)"
  t0=$(date +%s)
  # Not --foreground: on a timeout the whole process group goes (a build's compilers included),
  # not only the command, whose orphans would otherwise go on eating the lease.
  timeout -k 10 "$budget" "$@"
  rc=$?
  local wall=$(( $(date +%s) - t0 ))
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    echo "== gpu_check: stage $name TIMED OUT after ${budget} s (wall ${wall} s)"
    FAILED=1
  elif [ "$rc" != 0 ]; then
    echo "== gpu_check: stage $name FAILED (status $rc, wall ${wall} s)"
    FAILED=1
  else
    echo "== gpu_check: stage $name ok (wall ${wall} s)"
  fi
  return "$rc"
}

LINKED=0
trap '[ "$LINKED" = 1 ] && rm -f "$ROOT/dropgrad_cuda/triton_kernels"' EXIT
if [ "$BUILD_IN_PLACE" = 1 ]; then
  # The Triton sources install as dropgrad_cuda.triton_kernels; a checkout built in place reaches
  # them through this link (git-ignored, removed when the check ends).
  [ -e dropgrad_cuda/triton_kernels ] || { ln -s ../triton_kernels dropgrad_cuda/triton_kernels && LINKED=1; }
  # In place, with this interpreter's torch: its environment is left as it was.
  stage build "$B_BUILD" "$PY" setup.py -q build_ext --inplace || { echo "gpu_check: the build failed"; exit 1; }
fi
KERNELS=$("$PY" -c "import dropgrad_cuda as dg; print(int(dg.cuda_kernels_built()))") \
  || { echo "gpu_check: dropgrad_cuda does not import after the build"; exit 1; }
[ "$KERNELS" = 1 ] || echo "gpu_check: built without the CUDA kernels (no nvcc or CUDA_HOME?): the Triton backend only"

if [ "$DRY" = 1 ]; then
  for arch in ${TORCH_CUDA_ARCH_LIST//;/ }; do
    stage "triton sm_${arch/./}" 300 "$PY" -m dropgrad_cuda.triton_kernels.aot --arch "${arch/./}" \
      | grep -vE ": [0-9]+ registers, 0 bytes spill stores, 0 bytes spill loads$" \
      || { echo "gpu_check: a Triton kernel does not compile (or spills) with this Triton"; exit 1; }
  done
  COLLECTED=$("$PY" -m pytest -q -p no:cacheprovider --collect-only "${TEST_ARGS[@]}" 2>&1)
  rc=$?
  N=$(echo "$COLLECTED" | grep -E "^[0-9]+(/[0-9]+)? tests? (collected|selected)" | tail -1 | grep -oE "^[0-9]+")
  if [ "$rc" != 0 ] || [ -z "$N" ]; then
    echo "$COLLECTED" | tail -20
    echo "gpu_check: collecting the tests failed"
    exit 1
  fi
  echo "gpu_check: plan ($([ "$QUICK" = 1 ] && echo quick || echo full)), stage by stage:"
  echo "  build   ${B_BUILD} s  (done: in place with $PY, MAX_JOBS=$MAX_JOBS, archs $TORCH_CUDA_ARCH_LIST)"
  echo "  tests   ${B_TESTS} s  pytest ${TEST_ARGS[*]:-(whole suite)}: $N tests, JUnit XML in $OUT/gpu_tests.xml"
  echo "  report  ${B_REPORT} s  python -m benchmarks.gpu_report ${REPORT_ARGS[*]:-} --out $OUT"
  echo "gpu_check: dry run ok: $N tests selected, budget $BUDGET s"
  exit 0
fi

XDIST=()
"$PY" -c "import xdist" 2>/dev/null && XDIST=(-n "$(( $(nproc) < 8 ? $(nproc) : 8 ))")  # Triton's JIT compiles in parallel
stage tests "$B_TESTS" "$PY" -m pytest -q -rs -p no:cacheprovider "${XDIST[@]}" "${TEST_ARGS[@]}" \
  --junitxml="$OUT/gpu_tests.xml"
stage report "$B_REPORT" "$PY" -m benchmarks.gpu_report "${REPORT_ARGS[@]}" --out "$OUT"
echo "gpu_check: wrote $(ls "$OUT" | tr '\n' ' ')"
[ "$FAILED" = 1 ] && exit 1
[ "$KERNELS" = 1 ] || exit 4
exit 0
