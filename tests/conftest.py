import os

import pytest
import torch

import dropgrad_cuda as dg


needs_emulator = pytest.mark.skipif(not dg.cuda_emulator_built(),
                                    reason="built without the CUDA headers (cuda_fp16.h): no cuda-emulated backend")


def _backends():
    """(backend, device) pairs of the kernel backends; those this machine cannot run are reported as skipped."""
    gpu = torch.cuda.is_available()
    return [
        pytest.param(("cpu", "cpu"), id="cpu"),
        pytest.param(("triton", "cpu"), id="triton-interpreter", marks=pytest.mark.skipif(
            os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1")),
        pytest.param(("triton", "cuda"), id="triton-cuda", marks=pytest.mark.skipif(not gpu, reason="needs a CUDA GPU")),
        pytest.param(("cuda", "cuda"), id="cuda", marks=pytest.mark.skipif(
            not (gpu and dg.cuda_kernels_built()), reason="needs a CUDA GPU and the CUDA kernels")),
        pytest.param(("cuda-emulated", "cpu"), id="cuda-emulated", marks=needs_emulator),
    ]


@pytest.fixture(params=_backends())
def backend(request):
    """(backend name, device) of a kernel backend under test; the reference is the oracle."""
    return request.param


def pytest_configure(config):
    torch.set_num_threads(2)
    if os.environ.get("DROPGRAD_TEST_NNPACK") == "0":  # scripts/test.sh's imitation of another CPU
        torch.backends.nnpack.set_flags(False)


def pytest_collection_modifyitems(items):
    """Marks `gpu` every test that runs on a GPU: those on a CUDA backend parameter (cuda,
    triton-cuda) and those marked by hand (CUDA-graph replay, torch.compile on CUDA, ...).
    `scripts/gpu_check.sh --quick` runs `-m gpu`; CI runs the rest."""
    for item in items:
        spec = getattr(item, "callspec", None)
        if spec and any(isinstance(v, tuple) and len(v) == 2 and v[1] == "cuda" for v in spec.params.values()):
            item.add_marker(pytest.mark.gpu)
