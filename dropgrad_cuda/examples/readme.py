"""Checks the example's tables in the README against what the code on main does now.

Each table stands under a marker line `<!-- example-table: ARGS -->` naming the example's arguments.
Training amplifies the last bits of every convolution and matrix product, and those bits depend on
the kernels ATen, oneDNN, MKL, NNPACK and numpy pick for the CPU at hand: no setting makes training
reproduce bit for bit across CPU models (three models met so far gave three sets of bits). So the
check asks what a fresh run on any machine can honestly show, running the example twice:

- determinism: the two runs on this machine agree bit for bit (every result but the time);
- agreement: each row's mean lies within sqrt(ci_readme^2 + ci_fresh^2) of the README's, the 95%
  half-width of the difference of two independent means (the runs share their test tasks, so
  this is conservative, and it holds whichever SIMD path trained the model);
- learning: each row beats, on the same test tasks, a model that learned nothing (chance for
  classification, predicting 0 for regression) by more than 2.1 standard errors of the paired
  differences (Student's t, 95%, two-sided, for 19 or more tasks);
- effect: every regularizer's training-loss curve differs from plain MAML's (same tasks and seeds,
  so a regularizer that changed nothing would reproduce it exactly).

The tables are made in a subprocess at a baseline SIMD level with one thread (BASELINE_ENV), which
keeps a machine's runs deterministic and the numbers close to every other machine's.

    python -m dropgrad_cuda.examples.readme README.md            # every marked table (the default run: minutes)
    python -m dropgrad_cuda.examples.readme README.md --short    # only those marked with --iterations
    python -m dropgrad_cuda.examples.readme --cpu-env avx2        # an imitated CPU's settings, as shell exports
"""
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile

MARKER = re.compile(r"^<!-- example-table:(.*?)-->$", re.M)
MIN_TASKS, T95 = 19, 2.1  # Student's t, 95% two-sided, is at most 2.1 from 19 degrees of freedom on

# ATen's scalar (non-vectorized) kernels, oneDNN's SSE4.1 code, MKL's conditional numerical
# reproducibility and numpy's baseline features; one thread, since reductions split by thread
# count. scripts/test.sh runs the numerics tests under it too (and under an AVX2 imitation).
BASELINE_ENV = {
    "ATEN_CPU_CAPABILITY": "default",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
    "MKL_CBWR": "COMPATIBLE",
    "NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR",
    "OMP_NUM_THREADS": "1",
}
# The CPUs scripts/test.sh imitates when it reruns the numerics tests, so that an expectation that
# holds on this machine's SIMD path only fails here rather than on the next machine: the baseline
# (with NNPACK off too, which tests/conftest.py does for DROPGRAD_TEST_NNPACK=0; no variable of
# NNPACK's own pins its kernels) and an AVX2 machine (AVX-512 hidden from ATen, oneDNN, MKL, numpy).
IMITATED_CPUS = {
    "baseline": {**BASELINE_ENV, "DROPGRAD_TEST_NNPACK": "0"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR"},
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


def _number(cell):
    return float(cell.strip("±%"))


def fresh(args):
    """(results, printed table lines) of the example run with args now, under BASELINE_ENV."""
    with tempfile.TemporaryDirectory() as d:
        # oneDNN off too: its convolutions block their loops by the CPU's cache sizes.
        code = ("import sys, torch; torch.backends.mkldnn.enabled = False; "
                "from dropgrad_cuda.examples import few_shot; few_shot.main(sys.argv[1:])")
        run = subprocess.run([sys.executable, "-c", code, *args, "--no-progress", "--out", d],
                             env={**os.environ, **BASELINE_ENV}, capture_output=True, text=True)
        if run.returncode:
            raise RuntimeError(f"the example failed ({' '.join(args)}):\n{run.stderr[-3000:]}")
        with open(os.path.join(d, "results.json")) as fh:
            results = json.load(fh)["results"]
    return results, [l for l in run.stdout.splitlines() if l.startswith("|")]


def problems(rows, runs):
    """What a README table (rows, header first) and two fresh runs of its arguments disagree on,
    as sentences; [] when every check of the module docstring holds."""
    first, second = runs
    out = []
    strip = lambda results: [{k: v for k, v in r.items() if k != "seconds"} for r in results]
    if strip(first) != strip(second):
        out.append("two runs on this machine differ (the example is not deterministic)")
    body = rows[2:]  # header and separator
    if [(f"{r['task']} ({r['metric']})", r["method"]) for r in first] != [tuple(row[:2]) for row in body]:
        return out + ["the README's rows name other tasks or methods than a fresh run"]
    for row, r in zip(body, first):
        name = f"{row[0]} / {row[1]}"
        readme_mean, readme_ci = _number(row[2]), _number(row[3])
        tol = math.hypot(readme_ci, r["ci95"])
        if not abs(r["mean"] - readme_mean) <= tol:
            out.append(f"{name}: {r['mean']:.3f} now, {readme_mean:.3f} in the README (tolerance {tol:.3f})")
        sign = 1 if r["higher_is_better"] else -1
        gain = [sign * (s - t) for s, t in zip(r["scores"], r["trivial_scores"])]
        if len(gain) < MIN_TASKS:
            out.append(f"{name}: {len(gain)} test tasks, the learning check needs {MIN_TASKS}")
            continue
        se = statistics.stdev(gain) / math.sqrt(len(gain))
        if not statistics.mean(gain) > T95 * se:
            out.append(f"{name}: no better than a model that learned nothing (mean gain "
                       f"{statistics.mean(gain):.3f}, standard error {se:.3f})")
    plain = {r["task"]: r["curve"] for r in first if r["method"] == "none"}
    for r in first:
        if r["method"] != "none" and r["task"] in plain and r["curve"] == plain[r["task"]]:
            out.append(f"{r['task']} / {r['method']}: its training is plain MAML's, bit for bit (no effect)")
    return out


def check(readme_text, short_only=False):
    """[(args, problems, fresh table lines)] of the marked tables that fail a check."""
    bad = []
    for args, rows in tables(readme_text):
        if short_only and "--iterations" not in args:
            continue
        runs = [fresh(args) for _ in range(2)]
        found = problems(rows, [results for results, _ in runs])
        if found:
            bad.append((args, found, runs[0][1]))
    return bad


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--cpu-env"]:  # --cpu-env NAME: an imitated CPU's settings as shell exports
        print("\n".join(f"export {k}={shlex.quote(v)}" for k, v in IMITATED_CPUS[argv[1]].items()))
        return 0
    with open(argv[0]) as fh:
        bad = check(fh.read(), short_only="--short" in argv)
    for args, found, lines in bad:
        print(f"README table for {' '.join(args)}:\n  " + "\n  ".join(found) + "\na fresh run prints:")
        print("\n".join(lines))
    print("README example tables hold on this machine" if not bad else f"{len(bad)} table(s) fail")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
