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
import sys
from collections import defaultdict

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "results")

# Bytes each op moves per element (float32) and Philox calls per element, fused vs the eager
# published form, for the GPU section: analysis, not measurement.
GPU_ANALYSIS = [
    # op, fused bytes, eager bytes, eager launches, note
    ("drop_grad", 8, 16, 2, "noise written then read back"),
    ("dropgrad_update", 12, 28, 3, "noise, g*n and w-lr*x each a pass"),
    ("meta_dropout fwd", 12, 36, 4, "randn, add, softplus, mul"),
    ("meta_dropout fwd+bwd", 32, 72, 7, "backward re-reads the saved intermediates"),
]


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


def speed_table(rows):
    lines = ["| op | size | dtype | fused ms | eager ms | compile ms | floor ms | eager/fused | compile/fused | fused/floor |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for (op, size, dtype), r in rows.items():
        fu, ea, co, fl = (r.get(k) for k in ("fused", "eager", "compile", "floor"))
        lines.append(f"| {op} | {size} | {dtype} | {_ms(fu)} | {_ms(ea)} | {_ms(co)} | {_ms(fl)} | {_ratio(ea, fu)} | "
                     f"{_ratio(co, fu)} | {_ratio(fu, fl)} |")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.cases import MD_SIZES

    ops = sorted({op for op, size, _ in rows if size in MD_SIZES})
    fig, axes = plt.subplots(1, len(ops), figsize=(4.2 * len(ops), 3.6), squeeze=False)
    for ax, op in zip(axes[0], ops):
        for impl, style in (("fused", "o-"), ("eager", "s--"), ("compile", "^:"), ("floor", "k-")):
            pts = sorted((MD_SIZES[s], r[impl]) for (o, s, d), r in rows.items()
                         if o == op and d == "float32" and s in MD_SIZES and impl in r)
            if pts:
                ax.plot(*zip(*pts), style, label=impl, linewidth=2.5 if impl == "floor" else 1.5)
        ax.set(xscale="log", yscale="log", title=op, xlabel="elements")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("median ms (float32, 2 threads)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="more sizes (4K to 64M) and bfloat16")
    ap.add_argument("-k", default=None, help="only the op benchmarks whose id matches this pytest -k expression")
    ap.add_argument("--no-e2e", action="store_true", help="skip the meta-iteration and memory section")
    args = ap.parse_args(argv)
    if args.full:
        os.environ["DROPGRAD_BENCH_FULL"] = "1"
    os.makedirs(RESULTS, exist_ok=True)
    raw = os.path.join(RESULTS, "benchmarks.json")
    print("[1/4] op benchmarks (pytest-benchmark)", flush=True)
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
    md = [f"Medians of 7 rounds (15 after 6 warm-up rounds from 1M elements), 2 threads, on {report['machine']}; every ratio from this one run.\n",
          speed_table(rows)]

    from benchmarks import huge_pages

    thp = {setting: huge_pages.run(setting == "DROPGRAD_THP=1") for setting in ("default", "DROPGRAD_THP=1")}
    md += ["\n| 11M Gaussian update, outputs | fused ms | floor ms | fused/floor | slowest fused call, ms |",
           "| --- | ---: | ---: | ---: | ---: |"]
    for setting, r in thp.items():
        md.append(f"| {setting} | {r['fused']:.2f} | {r['floor']:.2f} | {_ratio(r['fused'], r['floor'])} | "
                  f"{r['fused_max']:.0f} |")
    report.update(huge_pages=thp)

    if not args.no_e2e:
        from benchmarks import meta_iteration as mi

        print("[2/4] second-order MAML meta-iterations (Conv-4, 5-way 5-shot, 5 inner steps, 4 tasks)", flush=True)
        times = mi.time_meta_iterations()
        base = times["none"][0]
        base_inner = times["none"][1]
        md += ["\n| meta-iteration | median s | vs none | inside the inner updates (forward), s | "
               "their extra time vs none, % of a meta-iteration |",
               "| --- | ---: | ---: | ---: | ---: |"]
        for name, (whole, inner) in times.items():
            md.append(f"| {name} | {whole:.3f} | {100 * (whole - base) / base:+.1f}% | {inner:.4f} | "
                      f"{100 * (inner - base_inner) / base:+.2f}% |")
        inside, whole = mi.fused_dropgrad_share()
        md.append("\nThe last column times the update calls themselves (their backward runs inside the "
                  "meta-iteration's backward and is not in it); the whole-iteration difference includes "
                  "run-to-run drift of a few percent. Profiled (torch.profiler), the fused DropGrad ops, forward "
                  f"and backward of both orders, took {inside:.3f} s of a {whole:.2f} s meta-iteration: "
                  f"**{100 * inside / whole:.2f}%**, an upper bound on the fused regularizer's overhead.")
        report.update(fused_dropgrad_share={"inside_s": inside, "whole_s": whole})
        print("[3/4] memory", flush=True)
        saved = mi.saved_bytes_per_inner_step()
        peak = {v: mi.peak_heap_mb(v) for v in mi.VARIANTS}
        bw = mi.memory_bandwidth_gbs()
        md += ["\n| inner update (Conv-4 list, create_graph) | bytes saved for backward | of which not inputs (noise) | "
               "peak heap of a meta-iteration, MB |", "| --- | ---: | ---: | ---: |"]
        for v in mi.VARIANTS:
            md.append(f"| {v} | {saved[v][0]} | {saved[v][1]} | {peak[v]:.1f} |")
        md.append("\nPeak heap: bytes in use in glibc's heap (mallinfo2, every arena and mmapped chunk, so tensors "
                  "included) sampled after every op of one meta-iteration in a fresh process, above the level "
                  "before it; the gap to none is what the regularizer keeps alive.")
        md.append(f"\nMemory bandwidth of this machine (copy, 2 threads): {bw:.1f} GB/s.")
        report.update(meta_iteration_s={k: {"whole": w, "inner_updates": i} for k, (w, i) in times.items()},
                      saved_bytes=saved, peak_heap_mb=peak, copy_bandwidth_gbs=bw)

        from benchmarks import vmap_meta_batch

        print("[4/4] meta-batch under torch.func.vmap vs the per-task loop", flush=True)
        vm = vmap_meta_batch.run()
        md += ["\nMeta-batch adapted under `torch.func.vmap(randomness=\"different\")` vs the per-task loop, "
               "30 interleaved rounds after 3 warm-ups (ratios above 1x: faster than the loop):\n",
               vmap_meta_batch.table(vm)]
        report.update(vmap_meta_batch=vm)

    md += ["\nGPU (analysis, not measurement: no GPU here). Bytes per float32 element and launches; a memory-bound "
           "kernel's expected speed-up over eager on an H100-class GPU is the byte ratio. Every fused op makes "
           "0.25 Philox calls per element (one call serves four elements), as does PyTorch's own normal_.",
           "\n| op | fused bytes/elem | eager bytes/elem | eager launches | expected eager/fused | why |",
           "| --- | ---: | ---: | ---: | ---: | --- |"]
    md += [f"| {op} | {f} | {e} | {l} | {e / f:.1f}x | {why} |" for op, f, e, l, why in GPU_ANALYSIS]
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
    print(f"\nwritten: {RESULTS}/report.md, report.json, ops.csv, benchmarks.json, time_vs_size.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
