"""The CUDA kernels as built here without a GPU: registered for every op, compiled for sm_80
and sm_90, no spills; and a CPU-only build that says why it is CPU-only."""
import os
import subprocess
import sys

import pytest
import torch

import dropgrad_cuda as dg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_cuda_build = pytest.mark.skipif(not dg.cuda_kernels_built(), reason="built without nvcc (CPU-only build)")


@needs_cuda_build
def test_every_op_has_a_cuda_kernel():
    for op in dg.ops.OP_NAMES:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"dropgrad::{op}", "CUDA"), op


@needs_cuda_build
def test_library_holds_sm80_and_sm90_code_without_spills():
    from dropgrad_cuda.cuda_build import resource_usage

    rows = resource_usage()
    kernels = {k for _, k, *_ in rows}
    for arch in ("sm_80", "sm_90"):
        assert {k for a, k, *_ in rows if a == arch} == kernels
    # One kernel an op, named after it (csrc/cuda/kernels.cuh), per dtype where the op takes one,
    # plus the generator-state unpack.
    typed = ("drop_grad", "dropgrad_update", "dropgrad_step", "meta_dropout", "meta_dropout_backward",
             "meta_dropout_double_backward")
    dtypes = ("float", "double", "__half", "__nv_bfloat16")
    assert kernels == ({f"{op}_kernel<{t}>" for op in typed for t in dtypes}
                       | {"noise_kernel", "philox4x32_10_kernel", "unpack_kernel"})
    assert all(stack == 0 and local == 0 for *_, stack, local in rows)


@needs_cuda_build
def test_docs_sass_tables_match_the_built_library():
    """docs/gpu.md's SASS tables (python -m dropgrad_cuda.cuda_build --sass --update-doc) name
    every kernel and architecture of this build and every fused op; their numbers are a build's."""
    from dropgrad_cuda import sass
    from dropgrad_cuda._table import ELEMENTS_MOVED
    from dropgrad_cuda.cuda_build import resource_usage
    from dropgrad_cuda.triton_kernels import configs

    with open(os.path.join(ROOT, "docs", "gpu.md")) as fh:
        doc = fh.read()
    section = doc[doc.index(sass.BEGIN):doc.index(sass.END)]
    rows = [[c.strip() for c in l.split("|")[1:-1]] for l in section.splitlines() if l.startswith("| ")]
    counted = {(r[0], r[1], r[2]) for r in rows if len(r) == 4 + len(sass.CLASSES) and r[0] in ("CUDA", "Triton")}
    built = {("CUDA", k, a) for a, k, *_ in resource_usage() if k != "unpack_kernel"}  # unpack: no per-element loop
    triton = {("Triton", op, a) for op in configs.predicted() for a in ("sm_80", "sm_90")}
    assert counted == built | triton
    predicted = {(r[0], r[1]) for r in rows if len(r) == 3 + 2 * len(sass.GPUS) and r[3] in ("memory", "compute")}
    assert predicted == {(op, b) for op in ELEMENTS_MOVED for b in ("CUDA", "Triton")}


def test_cpu_only_build_says_why():
    env = dict(os.environ, DROPGRAD_NO_CUDA="1")
    run = subprocess.run([sys.executable, "setup.py", "--name"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert "dropgrad_cuda: building the CPU kernels only (DROPGRAD_NO_CUDA=1)" in run.stdout


def test_the_wheel_carries_every_subpackage(tmp_path):
    """setup.py finds the packages rather than listing them (a wheel once lacked integrations/ and
    examples/). The full check, a wheel installed into a fresh venv, is `bash scripts/compat.sh wheel`."""
    env = dict(os.environ, DROPGRAD_NO_CUDA="1")
    run = subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    sources = (tmp_path / "dropgrad_cuda.egg-info" / "SOURCES.txt").read_text().split()
    packages = [os.path.relpath(d, ROOT) for top in ("dropgrad_cuda", "triton_kernels")
                for d, _, files in os.walk(os.path.join(ROOT, top)) if "__init__.py" in files]
    assert len(packages) >= 4
    for pkg in packages:
        assert f"{pkg}/__init__.py" in sources, pkg
    requires = (tmp_path / "dropgrad_cuda.egg-info" / "requires.txt").read_text().splitlines()
    assert requires[0] == "torch<2.16,>=2.11"  # a range: the user's torch stays


def test_every_cuda_launch_is_checked():
    """Each <<<...>>> launch in csrc/cuda is followed by check_launch (cudaGetLastError), so a launch
    that fails raises there, naming the kernel, not at a later unrelated call (main: none was)."""
    import glob
    import re
    launches = 0
    for path in glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu*")):
        with open(path) as fh:
            lines = fh.read().splitlines()
        for i, line in enumerate(lines):
            if re.search(r"<<<.*>>>", line):
                launches += 1
                assert "check_launch(" in lines[i + 1], f"{os.path.basename(path)}:{i + 1}: {line.strip()}"
    assert launches == 2  # DeviceLaunch (every kernel functor) and the generator-state unpack


def test_sass_report_of_a_one_arch_build(monkeypatch):
    """gpu_check --quick builds for the GPU present only: the report marks the other arch's
    predictions "not built" instead of failing on the missing counts."""
    from dropgrad_cuda import sass
    from dropgrad_cuda._table import ELEMENTS_MOVED

    counts = {c: 1.0 for c in sass.CLASSES}  # 8 instructions an element: memory-bound everywhere
    monkeypatch.setattr(sass, "cuda_kernels", lambda: {("sm_90", f"{op}_kernel<float>"): counts
                                                       for op in ELEMENTS_MOVED})
    monkeypatch.setattr(sass, "triton_kernels", lambda: {("sm_90", op): counts for op in ELEMENTS_MOVED})
    rows = [r for r in sass.report().splitlines() if r.startswith("| drop_grad | CUDA |")]
    assert rows == ["| drop_grad | CUDA | 8 | not built | - | memory | 100% | memory | 100% |"]
