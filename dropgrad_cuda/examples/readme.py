"""Checks that the example's tables in the README are what the code on main prints now.

Each table stands under a marker line `<!-- example-table: ARGS -->` naming the example's arguments;
a check reruns `few_shot` with them and compares every column but the time column. Training
amplifies the last bits of every convolution and matrix product, and those bits depend on the
SIMD path that ATen, oneDNN, MKL and numpy pick for the CPU at hand (AVX2 and AVX-512 machines
differ). So the tables are made, and checked, in a subprocess pinned to a baseline every x86-64
CPU runs the same way (BASELINE_ENV, one thread): a table no other machine can reproduce would
check nothing.

    python -m dropgrad_cuda.examples.readme README.md            # every marked table (the default run: minutes)
    python -m dropgrad_cuda.examples.readme README.md --short    # only those marked with --iterations
    python -m dropgrad_cuda.examples.readme --baseline-env       # the settings, as shell exports
"""
import os
import re
import shlex
import subprocess
import sys
import tempfile

MARKER = re.compile(r"^<!-- example-table:(.*?)-->$", re.M)

# ATen's scalar (non-vectorized) kernels, oneDNN's SSE4.1 code, MKL's conditional numerical
# reproducibility (the same results on every CPU it supports) and numpy's baseline features; one
# thread, since reductions split by thread count. scripts/test.sh runs the numerics tests under it too.
BASELINE_ENV = {
    "ATEN_CPU_CAPABILITY": "default",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
    "MKL_CBWR": "COMPATIBLE",
    "NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR",
    "OMP_NUM_THREADS": "1",
}


def tables(readme_text):
    """[(args, [row, ...])] for each marked table; a row is its cells without the time column."""
    out = []
    for m in MARKER.finditer(readme_text):
        rows = []
        for line in readme_text[m.end():].lstrip("\n").splitlines():
            if not line.startswith("|"):
                break
            rows.append(_cells(line))
        out.append((shlex.split(m.group(1)), rows))
    return out


def _cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")][:-1]


def fresh(args, full=False):
    """The table the example prints for args now, run under BASELINE_ENV: its rows without the
    time column, or (full) its lines as printed."""
    with tempfile.TemporaryDirectory() as d:
        # oneDNN off too: its convolutions block their loops by the CPU's cache sizes, so their
        # summation order can differ between CPUs at any ISA; ATen's own convolution calls MKL.
        code = ("import sys, torch; torch.backends.mkldnn.enabled = False; "
                "from dropgrad_cuda.examples import few_shot; few_shot.main(sys.argv[1:])")
        run = subprocess.run([sys.executable, "-c", code, *args, "--no-progress", "--out", d],
                             env={**os.environ, **BASELINE_ENV}, capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(f"the example failed ({' '.join(args)}):\n{run.stderr[-3000:]}")
    lines = [l for l in run.stdout.splitlines() if l.startswith("|")]
    return lines if full else [_cells(l) for l in lines]


def mismatches(readme_text, short_only=False):
    """[(args, readme rows, fresh rows)] of the marked tables that differ from a fresh run."""
    bad = []
    for args, rows in tables(readme_text):
        if short_only and "--iterations" not in args:
            continue
        now = fresh(args)
        if now != rows:
            bad.append((args, rows, now))
    return bad


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--baseline-env"]:
        print("\n".join(f"export {k}={shlex.quote(v)}" for k, v in BASELINE_ENV.items()))
        return 0
    with open(argv[0]) as fh:
        bad = mismatches(fh.read(), short_only="--short" in argv)
    for args, rows, now in bad:
        print(f"README table for {' '.join(args)} differs from a fresh run:")
        print("\n".join("| " + " | ".join(r) + " |" for r in now))
    print("README example tables match a fresh run" if not bad else f"{len(bad)} table(s) differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
