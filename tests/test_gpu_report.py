"""The GPU report (benchmarks/gpu_report.py, run by scripts/gpu_check.sh) assembled on CPU tensors
with the CPU timer at a small size, one round: every part but the CUDA timer and the GPU itself,
so the report works the first time it meets a GPU. Timings here are not measurements of anything."""
import json
import os
import subprocess
import sys

import pytest
import torch

from benchmarks import gpu_report
from benchmarks import cases as C
from benchmarks.cases import LISTS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUSED = {"fused cpu": "cpu", "fused reference": "reference"}


def test_gpu_report_assembles_on_cpu_tensors(tmp_path):
    sizes = {"4K": 4_000, "8K": 8_000}
    plan = [dict(sizes=sizes, md_sizes=sizes, dtypes=[torch.float32], with_compile=False)]
    text = gpu_report.assemble("cpu", FUSED, plan, gpu_report.cpu_timer, tmp_path, copy_n=1_000_000,
                               progress=lambda line: None)
    assert (tmp_path / "gpu_report.md").read_text() == text
    lines = text.splitlines()
    head = next(l for l in lines if l.startswith("| op | size | dtype | fused cpu ms"))
    assert "| fused reference ms | eager ms | compile ms | floor ms | eager/fused cpu | eager/fused reference |" in head
    ops = {"dropgrad_update/gaussian", "dropgrad_update/bernoulli", "drop_grad/gaussian", "drop_grad/bernoulli",
           "meta_dropout/fwd", "meta_dropout/fwd+bwd"}
    speed = [l for l in lines[lines.index(head) + 2:] if l.startswith("| ")]
    want = {(op, s) for op in ops for s in sizes} | {("dropgrad_step/gaussian", s) for s in LISTS} | \
        {("optimizer_step/gaussian", s) for s in (*LISTS, "11M")}
    table_rows = [tuple(c.strip() for c in l.split("|")[1:3]) for l in speed[:len(want)]]
    assert sorted(table_rows) == sorted(want)
    for l in speed[:len(want)]:  # a time for every fused row, and eager/fused ratios
        cells = [c.strip() for c in l.split("|")[1:-1]]
        assert float(cells[3]) > 0 and float(cells[4]) > 0 and cells[8].endswith("x"), l
    bw_head = next(l for l in lines if l.startswith("| op | size | dtype | fused cpu GB/s"))
    bw = [l for l in lines[lines.index(bw_head) + 2:] if l.startswith("| ")]
    assert len(bw) == len(want) and all(l.count("%") == 2 for l in bw)
    report = json.loads((tmp_path / "gpu_report.json").read_text())
    assert report["device"] == "CPU" and report["copy_gbs"] > 0 and len(report["ops"]) == len(want)
    assert all(v > 0 for v in report["bandwidth_gbs"].values())
    assert (tmp_path / "gpu_report.png").stat().st_size > 10_000


def test_quick_report_assembles_on_cpu_tensors_and_writes_each_row_as_it_finishes(tmp_path):
    """The --quick plan's shape at small sizes (4K for 16M, 8K for 64M): float32 at both, bfloat16
    at the larger, torch.compile at the smaller only, no lists. A timer that fails part-way leaves
    every row measured before it in gpu_report.md and .json."""
    plan = gpu_report.quick_plan("4K", "8K")
    for kw in plan:
        kw["with_compile"] = False  # a compile per row costs seconds on these CPUs; its selection is checked below
    text = gpu_report.assemble("cpu", FUSED, plan, gpu_report.cpu_timer, tmp_path, copy_n=1_000_000,
                               progress=lambda line: None)
    rows = [tuple(c.strip() for c in l.split("|")[1:4]) for l in text.splitlines() if l.startswith("| ")]
    ops = {r[0] for r in rows if r[0] not in ("op", "---")}
    assert not any(r[0].startswith(("dropgrad_step", "optimizer_step")) for r in rows)
    assert {(r[1], r[2]) for r in rows if r[0] == "dropgrad_update/gaussian"} >= {("4K", "float32"), ("8K", "float32")}
    assert all(("bfloat16" not in r[2]) or r[1] == "8K" for r in rows if r[0] in ops)
    compiled = [c for kw in gpu_report.quick_plan("4K", "8K") for c in C.cases(device="cpu", fused=FUSED, **kw)
                if c.impl == "compile"]
    assert compiled and {c.size for c in compiled} == {"4K"} and {c.dtype for c in compiled} == {torch.float32}

    calls = []

    def failing_timer(thunk):
        if len(calls) == 5:
            raise RuntimeError("the GPU went away")
        calls.append(1)
        return gpu_report.cpu_timer(thunk)

    with pytest.raises(RuntimeError, match="went away"):
        gpu_report.assemble("cpu", FUSED, plan, failing_timer, tmp_path / "partial", copy_n=1_000_000,
                            progress=lambda line: None)
    saved = json.loads((tmp_path / "partial" / "gpu_report.json").read_text())
    assert sum(len([k for k in o if k.endswith(" ms")]) for o in saved["ops"]) == 4  # 5 timings: the copy and 4 rows
    assert (tmp_path / "partial" / "gpu_report.md").read_text().count("dropgrad_update/gaussian") >= 1


GPU_LISTED = subprocess.run("nvidia-smi -L", shell=True, capture_output=True, text=True).stdout.startswith("GPU ")


@pytest.mark.skipif(GPU_LISTED, reason="a GPU is here: gpu_check.sh would run the whole suite, from inside it")
def test_gpu_check_without_a_gpu_says_so_and_exits_3():
    """One line and status 3, before anything is set up or built."""
    run = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_check.sh")], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 3 and run.stderr == ""
    assert run.stdout.count("\n") == 1 and run.stdout.startswith("gpu_check: no CUDA GPU here")


def _gpu_check(*args, timeout=60):
    return subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_check.sh"), *args], capture_output=True,
                          text=True, timeout=timeout)


def test_gpu_check_refuses_bad_arguments_with_one_line(tmp_path):
    run = _gpu_check("--fast")
    assert run.returncode == 2 and "unknown argument: --fast" in run.stderr and "usage:" in run.stderr
    (tmp_path / "file").write_text("")
    run = _gpu_check("--out", str(tmp_path / "file" / "sub"))
    assert run.returncode == 2 and run.stderr.strip().endswith("is not a writable folder")
    run = _gpu_check("--python", str(tmp_path / "no-such-python"))
    assert run.returncode == 2 and "no such interpreter" in run.stderr
    no_torch = tmp_path / "python-without-torch"
    no_torch.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")  # -S: no site-packages, so no torch
    no_torch.chmod(0o755)
    run = _gpu_check("--python", str(no_torch), "--out", str(tmp_path / "out"))
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "cannot import torch" in run.stderr


@pytest.mark.skipif(GPU_LISTED, reason="a GPU is here")
def test_gpu_check_with_an_interpreter_but_no_gpu_says_so_and_exits_3(tmp_path):
    run = _gpu_check("--python", sys.executable, "--quick", "--out", str(tmp_path))
    assert run.returncode == 3 and run.stderr == "" and run.stdout.count("\n") == 1, run.stdout + run.stderr
    assert run.stdout.startswith("gpu_check: no CUDA GPU here") and not os.listdir(tmp_path)  # nothing built or run
