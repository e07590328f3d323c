"""The GPU report (`bash scripts/gpu_check.sh` runs it on a machine with a CUDA GPU):

    python -m benchmarks.gpu_report        writes results/gpu_report.md, gpu_report.json, gpu_report.png

The rows are the CPU report's cases (benchmarks/cases.py) built on the GPU, the fused ones once
per GPU backend (CUDA kernels, Triton), timed with CUDA events after warm-up; the tables and the
plot are the CPU report's. Each fused row also gets its achieved bandwidth (the bytes the op must
move, over its time) and that as a share of a measured device-to-device copy. Then a second-order
MAML meta-iteration (Conv-4) with DropGrad: none / eager / fused, interleaved.

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


def assemble(device, fused, sizes, dtypes, timer, out_dir, *, e2e=True, with_compile=True, copy_n=64_000_000):
    """Times every case, writes gpu_report.md / .json / .png into out_dir and returns the markdown."""
    rows = {}
    for case in C.cases(sizes=sizes, md_sizes=sizes, dtypes=dtypes, device=device, fused=fused,
                        with_compile=with_compile):
        rows.setdefault((case.op, case.size, str(case.dtype).split(".")[-1]), {})[case.impl] = timer(case.make())
    copy = copy_bandwidth_gbs(device, timer, copy_n)
    bw_lines = ["| op | size | dtype | " + " | ".join(f"{f} GB/s | {f}, % of copy" for f in fused) + " |",
                "| --- | --- | --- | " + " | ".join("---: | ---:" for _ in fused) + " |"]
    bandwidth = {}
    for (op, size, dtype), r in rows.items():
        n = C.numel(size)
        moved = C.bytes_per_element(op, getattr(torch, dtype)) * n
        cells = []
        for f in fused:
            gbs = moved / (r[f] / 1e3) / 1e9 if f in r else None
            bandwidth[f"{op}|{size}|{dtype}|{f}"] = gbs
            cells.append("- | -" if gbs is None else f"{gbs:.3g} | {100 * gbs / copy:.0f}%")
        bw_lines.append(f"| {op} | {size} | {dtype} | " + " | ".join(cells) + " |")
    name = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else "CPU"
    driver = _driver()
    md = [f"# GPU report: {name}", "",
          f"Measured on {name}; driver {driver}, torch {torch.__version__}, CUDA {torch.version.cuda}. "
          f"Times: {timer.__name__} medians, ms. Device-to-device copy: {copy:.0f} GB/s.", "",
          speed_table(rows, impls=list(fused)), "",
          "Achieved bandwidth of the fused rows: the bytes each op must read and write (its inputs and outputs "
          "once, benchmarks/cases.py:bytes_per_element) over its time, and as a share of the copy.", "",
          "\n".join(bw_lines)]
    report = {"device": name, "driver": driver, "torch": torch.__version__, "cuda": torch.version.cuda,
              "copy_gbs": copy, "ops": [{"op": o, "size": s, "dtype": d, **{f"{k} ms": v for k, v in r.items()}}
                                        for (o, s, d), r in rows.items()], "bandwidth_gbs": bandwidth}
    if e2e:
        from benchmarks import meta_iteration as mi
        from benchmarks.interleave import describe

        res, both = mi.time_meta_iterations("DropGrad", device=device)
        md += ["", "Second-order MAML meta-iteration with DropGrad (" + mi.SHAPE + "), interleaved rounds:", "",
               "| meta-iteration | rounds | median s | vs none (paired, s) |", "| --- | ---: | ---: | --- |"]
        md += [f"| {k} | {c['rounds']} | {c['median']:.4f} | {'-' if k == 'none' else describe(c, digits=4)} |"
               for k, c in res.items()]
        md.append(f"\nFused vs eager, paired: {describe(both, digits=4)}.")
        report["meta_iteration"] = dict(vs_none=res, fused_vs_eager=both)
    os.makedirs(out_dir, exist_ok=True)
    text = "\n".join(md) + "\n"
    with open(os.path.join(out_dir, "gpu_report.md"), "w") as fh:
        fh.write(text)
    with open(os.path.join(out_dir, "gpu_report.json"), "w") as fh:
        json.dump(report, fh, indent=1)
    plot(rows, os.path.join(out_dir, "gpu_report.png"), sizes=sizes, ylabel=f"median ms ({name})")
    return text


def _driver():
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout.split("\n")[0].strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "none"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-e2e", action="store_true", help="skip the meta-iteration")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_report: torch sees no CUDA GPU")
        return 3
    import dropgrad_cuda as dg

    fused = {**({"fused cuda": "cuda"} if dg.cuda_kernels_built() else {}), "fused triton": "triton"}
    print(assemble("cuda", fused, GPU_SIZES, [torch.float32, torch.bfloat16], cuda_timer, RESULTS,
                   e2e=not args.no_e2e))
    print(f"written: {RESULTS}/gpu_report.md, gpu_report.json, gpu_report.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
