"""The GPU report (benchmarks/gpu_report.py, run by scripts/gpu_check.sh) assembled on CPU tensors
with the CPU timer at a small size, one round: every part but the CUDA timer and the GPU itself,
so the report works the first time it meets a GPU. Timings here are not measurements of anything."""
import json
import os
import subprocess

import pytest
import torch

from benchmarks import gpu_report
from benchmarks.cases import LISTS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_report_assembles_on_cpu_tensors(tmp_path):
    sizes = {"4K": 4_000, "8K": 8_000}
    text = gpu_report.assemble("cpu", {"fused cpu": "cpu", "fused reference": "reference"}, sizes, [torch.float32],
                               gpu_report.cpu_timer, tmp_path, e2e=False, with_compile=False, copy_n=1_000_000)
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


GPU_LISTED = subprocess.run("nvidia-smi -L", shell=True, capture_output=True, text=True).stdout.startswith("GPU ")


@pytest.mark.skipif(GPU_LISTED, reason="a GPU is here: gpu_check.sh would run the whole suite, from inside it")
def test_gpu_check_without_a_gpu_says_so_and_exits_3():
    """One line and status 3, before anything is set up or built."""
    run = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_check.sh")], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 3 and run.stderr == ""
    assert run.stdout.count("\n") == 1 and run.stdout.startswith("gpu_check: no CUDA GPU here")
