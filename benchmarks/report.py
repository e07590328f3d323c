"""The main job: benchmark the fused ops against the eager published code, torch.compile and the
memory floor on this machine, then print and save the report (results/).

    python -m benchmarks.report            short default: 112K and 11M elements, float32
    python -m benchmarks.report --full     adds 4K, 1M, 64M elements and bfloat16

Every ratio comes from one run on this machine; absolute times on shared machines drift.
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import time
from collections import defaultdict

import pytest

from benchmarks.interleave import describe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "results")

# Bytes the eager published form moves per float32 element and its launches, for the GPU section
# (the fused bytes are benchmarks.cases.bytes_per_element's): analysis, not measurement.
GPU_ANALYSIS = [
    # benchmark op, eager bytes, eager launches, note
    ("drop_grad", 16, 2, "noise written then read back"),
    ("dropgrad_update", 28, 3, "noise, g*n and w-lr*x each a pass"),
    ("meta_dropout/fwd", 36, 4, "randn, add, softplus, mul"),
    ("meta_dropout/fwd+bwd", 72, 7, "backward re-reads the saved intermediates"),
]


# The main job's parts and about how long each takes on a 2-core machine (seconds; --full: x4 for
# the op benchmarks), for the progress lines.
STAGES = [("op benchmarks", 420), ("host cost", 40), ("huge pages", 40), ("DropGrad meta-iterations", 330),
          ("Meta-Dropout meta-iterations", 420), ("memory", 120), ("vmap", 150)]


class Progress:
    """Prints '[k/n] what (about m min; about t min left in all)' as each part starts; the estimates
    are rescaled by how long the parts so far took against theirs."""

    def __init__(self, stages, full=False):
        self.est = [t * (4 if full and i == 0 else 1) for i, (_, t) in enumerate(stages)]
        self.k, self.t0 = 0, time.perf_counter()

    def __call__(self, what):
        done = sum(self.est[:self.k])
        scale = (time.perf_counter() - self.t0) / done if done else 1.0
        left = scale * sum(self.est[self.k:])
        self.k += 1
        print(f"[{self.k}/{len(self.est)}] {what} (about {scale * self.est[self.k - 1] / 60:.0f} min; about "
              f"{left / 60:.0f} min left in all)", flush=True)


def _rows(data):
    rows = defaultdict(dict)
    for b in data["benchmarks"]:
        e = b["extra_info"]
        rows[(e["op"], e["size"], e["dtype"])][e["impl"]] = b["stats"]["median"] * 1e3
    return rows


def _ratio(a, b):
    return f"{a / b:.2f}x" if a is not None and b is not None else "-"


def _ms(v):
    return f"{v:.3f}" if v is not None and v < 1 else (f"{v:.2f}" if v is not None else "-")


def speed_table(rows, impls=("fused",), copy_gbs=None):
    """The op table; impls: the fused rows' names (one on the CPU, one per backend on a GPU).
    copy_gbs: the machine's copy bandwidth, for the `copy` column: the time a copy of the fused
    op's bytes takes (benchmarks.cases.bytes_per_element), the op's memory limit."""
    from benchmarks.cases import bytes_per_element, numel
    import torch

    if copy_gbs:
        for (op, size, dtype), r in rows.items():
            r["copy"] = bytes_per_element(op, getattr(torch, dtype)) * numel(size) / copy_gbs / 1e6
    ratios = [(f"eager/{i}", "eager", i) for i in impls] + [(f"compile/{i}", "compile", i) for i in impls] + \
        [(f"{i}/floor", i, "floor") for i in impls] + ([(f"{i}/copy", i, "copy") for i in impls] if copy_gbs else [])
    times = [*impls, "eager", "compile", "floor"] + (["copy"] if copy_gbs else [])
    lines = ["| op | size | dtype | " + " | ".join(f"{t} ms" for t in times) + " | " +
             " | ".join(name for name, _, _ in ratios) + " |",
             "| --- | --- | --- | " + " | ".join("---:" for _ in times + ratios) + " |"]
    for (op, size, dtype), r in rows.items():
        lines.append(f"| {op} | {size} | {dtype} | " + " | ".join(_ms(r.get(t)) for t in times) + " | " +
                     " | ".join(_ratio(r.get(a), r.get(b)) for _, a, b in ratios) + " |")
    return "\n".join(lines)


def plot(rows, path, sizes=None, ylabel="median ms (float32, 2 threads)"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.cases import MD_SIZES, numel

    sizes = sizes or MD_SIZES
    per_op = defaultdict(set)
    for op, size, _ in rows:
        if size in sizes:
            per_op[op].add(size)
    ops = sorted(op for op, s in per_op.items() if len(s) > 1)  # a curve needs two sizes
    if not ops:
        return
    impls = sorted({i for (op, size, d), r in rows.items() if op in ops for i in r},
                   key=lambda i: (i in ("eager", "compile", "floor"), i))
    styles = {"eager": "s--", "compile": "^:", "floor": "k-"}
    fig, axes = plt.subplots(1, len(ops), figsize=(4.2 * len(ops), 3.6), squeeze=False)
    for ax, op in zip(axes[0], ops):
        for impl in impls:
            pts = sorted((numel(s), r[impl]) for (o, s, d), r in rows.items()
                         if o == op and d == "float32" and s in sizes and impl in r)
            if pts:
                ax.plot(*zip(*pts), styles.get(impl, "o-"), label=impl, linewidth=2.5 if impl == "floor" else 1.5)
        ax.set(xscale="log", yscale="log", title=op, xlabel="elements")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(ylabel)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="more sizes (4K to 64M) and bfloat16")
    ap.add_argument("-k", default=None, help="only the op benchmarks whose id matches this pytest -k expression")
    ap.add_argument("--no-e2e", action="store_true", help="skip the meta-iteration and memory section")
    args = ap.parse_args(argv)
    source = provenance()  # before anything is measured or written
    if args.full:
        os.environ["DROPGRAD_BENCH_FULL"] = "1"
    os.makedirs(RESULTS, exist_ok=True)
    raw = os.path.join(RESULTS, "benchmarks.json")
    stage = Progress(STAGES if not args.no_e2e else STAGES[:3], full=args.full)
    stage("op benchmarks (pytest-benchmark)")
    pytest_args = [os.path.join(os.path.dirname(__file__), "test_bench.py"), "-q", "-p", "no:cacheprovider",
                   f"--benchmark-json={raw}", "--benchmark-disable-gc", "--benchmark-columns=median,iqr,rounds"]
    if args.k:
        pytest_args += ["-k", args.k]
    if pytest.main(pytest_args) != 0:
        return 1
    with open(raw) as fh:
        data = json.load(fh)
    rows = _rows(data)
    report = {"machine": data["machine_info"].get("cpu", {}).get("brand_raw", "?"), "ops": [
        {"op": op, "size": size, "dtype": dtype, **{f"{k}_ms": v for k, v in r.items()}}
        for (op, size, dtype), r in rows.items()]}
    from benchmarks.meta_iteration import memory_bandwidth_gbs
    from dropgrad_cuda import _C

    bw = memory_bandwidth_gbs()
    report.update(copy_bandwidth_gbs=bw, cpu_isa=_C.cpu_isa())
    md = [f"Medians of 7 rounds (15 after 6 warm-up rounds from 1M elements), 2 threads, on {report['machine']} "
          f"(CPU kernels: {_C.cpu_isa()}); every ratio from this one run. `copy`: the time a copy of the fused "
          f"op's bytes takes at this machine's copy bandwidth, {bw:.1f} GB/s (2 threads), the memory limit; "
          "fused/copy is how far an op is from it.\n",
          speed_table(rows, copy_gbs=bw)]

    from benchmarks import host_cost, huge_pages

    stage("host cost: tiny tensors, fused vs the eager form, interleaved")
    hc = host_cost.run()
    md += ["\nHost cost on tiny tensors (10 elements, one thread: the arithmetic is negligible, what remains is "
           "Python, checks, the dispatcher and autograd, which bound small models on a GPU); variants "
           f"interleaved over {host_cost.ROUNDS} rounds, each ratio the median over the paired rounds with its 95% interval (order statistics):\n",
           host_cost.table(hc)]
    report.update(host_cost=hc)

    stage("huge pages: the 11M update with and without DROPGRAD_THP=1")
    thp = {setting: huge_pages.run(setting == "DROPGRAD_THP=1") for setting in ("default", "DROPGRAD_THP=1")}
    md += ["\n| 11M Gaussian update, outputs | fused ms | floor ms | fused/floor | slowest fused call, ms |",
           "| --- | ---: | ---: | ---: | ---: |"]
    for setting, r in thp.items():
        md.append(f"| {setting} | {r['fused']:.2f} | {r['floor']:.2f} | {_ratio(r['fused'], r['floor'])} | "
                  f"{r['fused_max']:.0f} |")
    report.update(huge_pages=thp)

    if not args.no_e2e:
        from benchmarks import meta_iteration as mi
        from benchmarks import vmap_meta_batch

        for bench in mi.BENCHES:
            stage(f"second-order MAML meta-iterations with {bench}: none / eager / fused, interleaved rounds")
            res, both = mi.time_meta_iterations(bench, progress=lambda r, left: print(
                f"      round {r} done, at most {left / 60:.1f} min left of this part", flush=True))
            parts, whole = mi.fused_profile(bench)
            md += [f"\n{bench}: second-order MAML meta-iterations ({mi.SHAPE}), the variants interleaved round by "
                   f"round after a warm-up round; paired differences to none with their 95% confidence interval "
                   f"(Student's t over the rounds), \"no difference measurable\" where it includes zero.\n",
                   "| meta-iteration | rounds | median s | vs none (paired, s) | vs none, % |",
                   "| --- | ---: | ---: | --- | ---: |"]
            for name, c in res.items():
                vs = "-" if name == "none" else describe(c)
                pct = f"{100 * c['diff'] / c['base_median']:+.1f}%" if name != "none" and c["resolved"] else "-"
                md.append(f"| {name} | {c['rounds']} | {c['median']:.3f} | {vs} | {pct} |")
            fused, eager = res[f"fused {bench}"], res[f"eager {bench}"]
            md.append(f"\nFused vs eager, paired: {describe(both)}; eager/fused of the medians "
                      f"{eager['median'] / fused['median']:.2f}x.")
            md.append(f"Profiled (torch.profiler, one fused meta-iteration of {whole:.2f} s; CPU time of each event "
                      "and what it calls): " + "; ".join(f"{part} {t:.3f} s ({100 * t / whole:.1f}%)"
                                                         for part, t in parts.items()) + ".")
            report.setdefault("meta_iteration", {})[bench] = dict(vs_none=res, fused_vs_eager=both,
                                                                  fused_profile=dict(parts, whole_s=whole))

        stage("memory: bytes saved for backward per inner step, peak heap of a meta-iteration, bandwidth")
        md += ["\n| inner step (second order) | saved by the regularizer's calls, MB | of which not their inputs, MB | "
               "saved by the whole inner step, MB | peak heap of a meta-iteration, MB |",
               "| --- | ---: | ---: | ---: | ---: |"]
        for bench in mi.BENCHES:
            saved = mi.saved_bytes_per_inner_step(bench)
            peak = {v: mi.peak_heap_mb(bench, v) for v in mi.BENCHES[bench]}
            for v in mi.BENCHES[bench]:
                (reg, extra), step = saved[v]["regularizer"], saved[v]["step"]
                md.append(f"| {bench}: {v} | {reg / 2**20:.2f} | {extra / 2**20:.2f} | {step / 2**20:.1f} | "
                          f"{peak[v]:.1f} |")
            report.setdefault("memory", {})[bench] = dict(saved_bytes=saved, peak_heap_mb=peak)
        md.append("\nSaved: the distinct tensors autograd keeps from one inner step of the first task (support "
                  "forward, create_graph gradient, update), as second-order MAML keeps them for every step; the "
                  "regularizer's calls are the update (DropGrad) and the four meta-dropout blocks' forward. Peak "
                  "heap: bytes in use in glibc's heap (mallinfo2, every arena and mmapped chunk, so tensors "
                  "included) sampled after every op of one meta-iteration in a fresh process, above the level "
                  "before it.")

        stage("meta-batch under torch.func.vmap vs the per-task loop")
        vm = vmap_meta_batch.run()
        md += ["\nMeta-batch adapted under `torch.func.vmap(randomness=\"different\")` vs the per-task loop, "
               "30 interleaved rounds after 3 warm-ups (ratios above 1x: faster than the loop):\n",
               vmap_meta_batch.table(vm)]
        report.update(vmap_meta_batch=vm)

    md += ["\nGPU (analysis, not measurement: no GPU here). Bytes per float32 element and launches; a memory-bound "
           "kernel's expected speed-up over eager on an H100-class GPU is the byte ratio (which fused kernels are "
           "memory-bound is predicted from their SASS in docs/gpu.md; `bash scripts/gpu_check.sh` measures "
           "it on a GPU). Every fused op makes "
           "0.25 Philox calls per element (one call serves four elements), as does PyTorch's own normal_.",
           "\n| op | fused bytes/elem | eager bytes/elem | eager launches | expected eager/fused | why |",
           "| --- | ---: | ---: | ---: | ---: | --- |"]
    import torch

    from benchmarks.cases import bytes_per_element

    fused = {op: bytes_per_element(op, torch.float32) for op, *_ in GPU_ANALYSIS}
    md += [f"| {op} | {fused[op]} | {e} | {l} | {e / fused[op]:.1f}x | {why} |" for op, e, l, why in GPU_ANALYSIS]
    md.append("| dropgrad_step, Conv-4 list | 12 | 28 | 54 | launch-bound: 1 launch vs 3 per tensor | |")
    text = "\n".join(md)
    print("\n" + text)
    with open(os.path.join(RESULTS, "report.md"), "w") as fh:
        fh.write(text + "\n")
    with open(os.path.join(RESULTS, "report.json"), "w") as fh:
        json.dump(report, fh, indent=1)
    with open(os.path.join(RESULTS, "ops.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["op", "size", "dtype", "fused_ms", "eager_ms", "compile_ms", "floor_ms"])
        w.writeheader()
        w.writerows(report["ops"])
    plot(rows, os.path.join(RESULTS, "time_vs_size.png"))
    if not args.k:  # a whole run refreshes the committed copy: docs/benchmarks.md and its plot
        with open(os.path.join(ROOT, "docs", "benchmarks.md"), "w") as fh:
            fh.write(docs_page(text, report["machine"], source))
        plot(rows, os.path.join(ROOT, "docs", "time_vs_size.png"))
    print(f"\nwritten: {RESULTS}/report.md, report.json, ops.csv, benchmarks.json, time_vs_size.png"
          + ("" if args.k else "; docs/benchmarks.md, docs/time_vs_size.png"))
    return 0


def provenance():
    """The commit the run measures, and whether tracked files differed from it when the run began."""
    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "?"
    return commit + (" with uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def docs_page(text, machine, source):
    """docs/benchmarks.md: the report with the commit (provenance()), machine and date it ran on at the top."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (f"# Benchmarks: fused ops against the eager reference\n\nWritten by the main job (`bash scripts/bench.sh`, "
            f"benchmarks/report.py) at commit {source}, on {machine} ({os.cpu_count()} cores, no GPU), "
            f"{when}. Measured on this CPU; nothing here is a GPU figure (the GPU analysis at the end is "
            f"predicted). Each rerun of the main job rewrites this page.\n\n{text}\n\n"
            "![time vs size](time_vs_size.png)\n")


if __name__ == "__main__":
    sys.exit(main())
