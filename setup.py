"""Builds dropgrad_cuda._C: the CPU kernels always, the CUDA kernels where nvcc and a CUDA build of torch exist."""
import glob
import os
import shutil

from setuptools import setup
from torch.utils import cpp_extension

CXX_FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-fopenmp"]
# -ffp-contract=off keeps results bit-equal to the reference; the other two only let GCC vectorize.


def cuda_available_for_build():
    if os.environ.get("DROPGRAD_NO_CUDA") == "1":
        return False, "DROPGRAD_NO_CUDA=1"
    import torch

    if torch.version.cuda is None:
        return False, "torch is a CPU-only build"
    if cpp_extension.CUDA_HOME is None or shutil.which("nvcc") is None and not os.path.exists(
        os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")
    ):
        return False, "nvcc was not found (set CUDA_HOME or put nvcc on PATH)"
    return True, ""


def extension():
    sources = ["csrc/ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
    with_cuda, why = cuda_available_for_build()
    if with_cuda and cuda_sources:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        return cpp_extension.CUDAExtension(
            "dropgrad_cuda._C",
            sources + cuda_sources,
            extra_compile_args={
                "cxx": CXX_FLAGS + ["-DDROPGRAD_WITH_CUDA"],
                "nvcc": ["-O3", "--fmad=false", "-Xptxas=-v", "-DDROPGRAD_WITH_CUDA"],
            },
            extra_link_args=["-fopenmp"],
        )
    if cuda_sources:
        print(f"dropgrad_cuda: building the CPU kernels only ({why})")
    return cpp_extension.CppExtension(
        "dropgrad_cuda._C", sources, extra_compile_args={"cxx": CXX_FLAGS}, extra_link_args=["-fopenmp"]
    )


setup(
    name="dropgrad_cuda",
    version="0.1.0",
    description="Fused, exactly reproducible kernels for DropGrad, Meta-Dropout and CML meta-learning",
    packages=["dropgrad_cuda", "dropgrad_cuda.triton_kernels"],
    package_dir={"dropgrad_cuda.triton_kernels": "triton_kernels"},
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
    python_requires=">=3.10",
    install_requires=["torch==2.14.1"],
)
