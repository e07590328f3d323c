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
    typed = ("drop_grad", "dropgrad_update", "dropgrad_step", "meta_dropout", "meta_dropout_backward")
    dtypes = ("float", "double", "__half", "__nv_bfloat16")
    assert kernels == ({f"{op}_kernel<{t}>" for op in typed for t in dtypes}
                       | {"noise_kernel", "philox4x32_10_kernel", "unpack_kernel"})
    assert all(stack == 0 and local == 0 for *_, stack, local in rows)


def test_cpu_only_build_says_why():
    env = dict(os.environ, DROPGRAD_NO_CUDA="1")
    run = subprocess.run([sys.executable, "setup.py", "--name"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert "dropgrad_cuda: building the CPU kernels only (DROPGRAD_NO_CUDA=1)" in run.stdout
