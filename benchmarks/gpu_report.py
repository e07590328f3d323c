"""The GPU report (`bash scripts/gpu_check.sh` runs it on a machine with a CUDA GPU):

    python -m benchmarks.gpu_report        writes results/gpu_report.md, gpu_report.json, gpu_report.png

    python -m benchmarks.gpu_report --quick --out DIR     the short plan, into DIR

The rows are the CPU report's cases (benchmarks/cases.py) built on the GPU (inputs made there),
the fused ones once per GPU backend (CUDA kernels, Triton), timed with CUDA events after warm-up;
the tables and the plot are the CPU report's. Each fused row also gets its achieved bandwidth (the
bytes the op must move, over its time) and that as a share of a measured device-to-device copy.
Then second-order MAML meta-iterations (Conv-4) with DropGrad and with Meta-Dropout: none / eager /
fused, interleaved. The markdown and JSON are rewritten after every row.

`assemble` is the whole report for any device and timer: a test runs it on CPU tensors with the
CPU timer, so everything but the CUDA timer runs on every machine.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from benchmarks import cases as C
from benchmarks.report import RESULTS, plot, speed_table

GPU_SIZES = {"1M": 1_000_000, "4M": 4_000_000, "16M": 16_000_000, "64M": 64_000_000}


def cuda_timer(thunk, warmup=10, rounds=30):
    """Median milliseconds of thunk on the current CUDA stream, by CUDA events, after warm-up."""
    for _ in range(warmup):
        thunk()
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        thunk()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def cpu_timer(thunk, warmup=0, rounds=1):
    for _ in range(warmup):
        thunk()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        thunk()
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def copy_bandwidth_gbs(device, timer, n=64_000_000):
    """Device-to-device copy of n float32 (read + write bytes per second)."""
    src, dst = torch.ones(n, device=device), torch.empty(n, device=device)
    return 2 * n * 4 / (timer(lambda: dst.copy_(src)) / 1e3) / 1e9


class _Report:
    """The report as far as it got: markdown and JSON rewritten after every finished row, so a
    failure or a time-out later in the run loses nothing measured before it."""

    def __init__(self, out_dir, fused, header, info):
        self.out_dir, self.fused, self.header, self.info = out_dir, fused, header, info
        self.rows, self.sections = {}, []
        os.makedirs(out_dir, exist_ok=True)

    def markdown(self):
        fused = self.fused
        md = list(self.header)
        if self.rows:
            copy = self.info["copy_gbs"]
            bw = ["| op | size | dtype | " + " | ".join(f"{f} GB/s | {f}, % of copy" for f in fused) + " |",
                  "| --- | --- | --- | " + " | ".join("---: | ---:" for _ in fused) + " |"]
            self.info["bandwidth_gbs"] = {}
            for (op, size, dtype), r in self.rows.items():
                moved = C.bytes_per_element(op, getattr(torch, dtype)) * C.numel(size)
                cells = []
                for f in fused:
                    gbs = moved / (r[f] / 1e3) / 1e9 if f in r else None
                    self.info["bandwidth_gbs"][f"{op}|{size}|{dtype}|{f}"] = gbs
                    cells.append("- | -" if gbs is None else f"{gbs:.3g} | {100 * gbs / copy:.0f}%")
                bw.append(f"| {op} | {size} | {dtype} | " + " | ".join(cells) + " |")
            md += [speed_table(self.rows, impls=list(fused)), "",
                   "Achieved bandwidth of the fused rows: the bytes each op must read and write (its inputs and "
                   "outputs once, benchmarks/cases.py:bytes_per_element) over its time, and as a share of the copy.",
                   "", "\n".join(bw)]
        for section in self.sections:
            md += ["", *section]
        return "\n".join(md) + "\n"

    def write(self):
        text = self.markdown()
        self.info["ops"] = [{"op": o, "size": s, "dtype": d, **{f"{k} ms": v for k, v in r.items()}}
                            for (o, s, d), r in self.rows.items()]
        with open(os.path.join(self.out_dir, "gpu_report.md"), "w") as fh:
            fh.write(text)
        with open(os.path.join(self.out_dir, "gpu_report.json"), "w") as fh:
            json.dump(self.info, fh, indent=1)
        return text


def assemble(device, fused, plan, timer, out_dir, *, e2e=(), e2e_rounds=(4, 10), e2e_budget_s=240,
             copy_n=64_000_000, progress=print):
    """Times every case of plan (a list of benchmarks.cases.cases() keyword sets), writing
    gpu_report.md / .json into out_dir after each row, then the plot, then each meta-iteration
    benchmark named in e2e ("DropGrad", "Meta-Dropout"); returns the markdown."""
    name = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else "CPU"
    driver = _driver()
    copy = copy_bandwidth_gbs(device, timer, copy_n)
    header = [f"# GPU report: {name}", "",
              f"Measured on {name}; driver {driver}, torch {torch.__version__}, CUDA {torch.version.cuda}. "
              f"Times: {timer.__name__} medians, ms. Device-to-device copy: {copy:.0f} GB/s.", ""]
    report = _Report(out_dir, fused, header, {"device": name, "driver": driver, "torch": torch.__version__,
                                       "cuda": torch.version.cuda, "copy_gbs": copy})
    for kwargs in plan:
        for case in C.cases(device=device, fused=fused, **kwargs):
            t = timer(case.make())
            report.rows.setdefault((case.op, case.size, str(case.dtype).split(".")[-1]), {})[case.impl] = t
            report.write()
            progress(f"gpu_report: {case.id}: {t:.4g} ms")
    sizes = {s: C.numel(s) for kw in plan for s in kw.get("sizes", {})}
    plot(report.rows, os.path.join(out_dir, "gpu_report.png"), sizes=sizes, ylabel=f"median ms ({name})")
    text = report.write()
    for bench in e2e:
        from benchmarks import meta_iteration as mi
        from benchmarks.interleave import describe

        res, both = mi.time_meta_iterations(bench, min_rounds=e2e_rounds[0], max_rounds=e2e_rounds[1],
                                            budget_s=e2e_budget_s, device=device)
        report.sections.append(
            [f"Second-order MAML meta-iteration with {bench} ({mi.SHAPE}), interleaved rounds:", "",
             "| meta-iteration | rounds | median s | vs none (paired, s) |", "| --- | ---: | ---: | --- |",
             *[f"| {k} | {c['rounds']} | {c['median']:.4f} | {'-' if k == 'none' else describe(c, digits=4)} |"
               for k, c in res.items()],
             "", f"Fused vs eager, paired: {describe(both, digits=4)}."])
        report.info.setdefault("meta_iteration", {})[bench] = dict(vs_none=res, fused_vs_eager=both)
        text = report.write()
        progress(f"gpu_report: {bench} meta-iteration done")
    return text


# The plans: lists of cases() keyword sets.
FULL_PLAN = [dict(sizes=GPU_SIZES, md_sizes=GPU_SIZES, dtypes=[torch.float32, torch.bfloat16])]


def quick_plan(small="16M", large="64M"):
    """The plan for a short GPU lease (scripts/gpu_check.sh --quick): float32 at two sizes,
    bfloat16 at the larger, one torch.compile size (each compile costs seconds), no lists."""
    two = {s: C.numel(s) for s in (small, large)}
    return [dict(sizes=two, md_sizes=two, dtypes=[torch.float32], compile_sizes={small}, lists=False),
            dict(sizes={large: two[large]}, md_sizes={large: two[large]}, dtypes=[torch.bfloat16],
                 with_compile=False, lists=False)]


def _driver():
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout.split("\n")[0].strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "none"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-e2e", action="store_true", help="skip the meta-iterations")
    ap.add_argument("--quick", action="store_true", help="the short plan (scripts/gpu_check.sh --quick)")
    ap.add_argument("--out", default=RESULTS, help="folder of gpu_report.md, .json, .png (default: results/)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_report: torch sees no CUDA GPU")
        return 3
    import dropgrad_cuda as dg

    fused = {**({"fused cuda": "cuda"} if dg.cuda_kernels_built() else {}), "fused triton": "triton"}
    e2e = () if args.no_e2e else ("DropGrad", "Meta-Dropout")
    print(assemble("cuda", fused, quick_plan() if args.quick else FULL_PLAN, cuda_timer, args.out, e2e=e2e,
                   e2e_rounds=(3, 5) if args.quick else (4, 10), e2e_budget_s=30 if args.quick else 240))
    print(f"written: {args.out}/gpu_report.md, gpu_report.json, gpu_report.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
