"""Builds dropgrad_cuda._C: the CPU kernels always, the CUDA kernels where nvcc and a CUDA build of torch exist."""
import glob
import os
import re
import shutil
import subprocess

from setuptools import find_packages, setup


def _find_cuda_home():
    """The toolkit root behind the nvcc on PATH (which may be a wrapper script, as on these
    machines), for torch's cpp_extension, which otherwise guesses the nvcc's parent folder."""
    nvcc = shutil.which("nvcc")
    if os.environ.get("CUDA_HOME") or nvcc is None:
        return
    dry = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull], capture_output=True, text=True).stderr
    top = re.search(r"^#\$ TOP=(.+)$", dry, re.M)
    if top:
        os.environ["CUDA_HOME"] = os.path.realpath(top.group(1).strip())


_find_cuda_home()
from torch.utils import cpp_extension  # noqa: E402  (reads CUDA_HOME on import)

CXX_FLAGS = ["-O3", "-g0", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-fopenmp",
             "-idirafter", os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "compat")]
# -g0 undoes the -g of Python's own CFLAGS: debug information for torch's templates was 60% of the
# build's time (and 97% of an object's size); -ffp-contract=off keeps results bit-equal to the
# reference (the contract's FMAs are explicit); the next two only let GCC vectorize; csrc/compat stands in for a header torch's
# functorch headers include but do not ship.


def cuda_available_for_build():
    if os.environ.get("DROPGRAD_NO_CUDA") == "1":
        return False, "DROPGRAD_NO_CUDA=1"
    import torch

    if torch.version.cuda is None:
        return False, "torch is a CPU-only build"
    if cpp_extension.CUDA_HOME is None or not os.path.exists(os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")):
        return False, "nvcc was not found (put nvcc on PATH or set CUDA_HOME)"
    return True, ""


def cuda_headers():
    """The CUDA toolkit's include folder, if it has the headers the cuda-emulated backend compiles
    against (cuda_fp16.h, cuda_bf16.h and cuda_runtime.h, host code only: no GPU, no nvcc)."""
    home = cpp_extension.CUDA_HOME or os.environ.get("CUDA_HOME")  # a CPU-only torch reports no CUDA_HOME
    include = os.path.join(home, "include") if home else ""
    return include if os.path.exists(os.path.join(include, "cuda_fp16.h")) else None


def one_unit(name, sources):
    """A translation unit, written under build/, that includes `sources`: the torch headers they
    share (most of each one's compile time) are parsed once, not once a file (ops.cpp, batching.cpp
    and dropgrad_cuda_ops.cpp at -O1 here: 38.5 s apart, 20.6 s as one unit)."""
    root = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(root, "build", "units", name)
    text = "".join(f'#include "{os.path.join(root, s)}"\n' for s in sources)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    old = None
    if os.path.exists(path):
        with open(path) as fh:
            old = fh.read()
    if old != text:  # rewritten only when it changes, so ninja does not rebuild it for nothing
        with open(path, "w") as fh:
            fh.write(text)
    return os.path.relpath(path, root)


def extension():
    with_cuda, why = cuda_available_for_build()
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu")) if with_cuda else []
    # The op schemas, the batching rules and the CUDA ops' host side: one unit (their names do not
    # clash). autograd.cpp (the only one that needs all of ATen.h) and the CPU kernels stay apart,
    # so the two compile jobs run in parallel with it.
    glue = ["csrc/ops.cpp", "csrc/batching.cpp"] + (sorted(glob.glob("csrc/cuda/*.cpp")) if with_cuda else [])
    sources = [one_unit("glue.cpp", glue), "csrc/autograd.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    include = cuda_headers()
    # The GPU check's quick build (scripts/gpu_check.sh --quick), for a lease of minutes: only what
    # its GPU tests and report run. No CUDA emulator (the CPU suite's backend) and the host C++ at
    # -O1 (a third less compile time; the same results, as nothing contracts or reassociates
    # floating point at any level): the GPU kernels are nvcc's -O3 either way.
    quick = os.environ.get("DROPGRAD_QUICK_BUILD") == "1"
    cxx_flags = CXX_FLAGS + (["-O1"] if quick else [])
    if quick:
        print("dropgrad_cuda: DROPGRAD_QUICK_BUILD=1, so no cuda-emulated backend and host C++ at -O1")
    elif include:
        sources += sorted(glob.glob("csrc/emulated/*.cpp"))
    else:
        print("dropgrad_cuda: no CUDA headers (cuda_fp16.h) found, so no cuda-emulated backend")
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        return cpp_extension.CUDAExtension(
            "dropgrad_cuda._C",
            sources + cuda_sources,
            extra_compile_args={
                "cxx": cxx_flags,
                # --fmad=false: no FMA contraction but the contract's explicit ones (__fmaf_rn), so the
                # GPU follows the contract's operation order.
                "nvcc": ["-O3", "--fmad=false"],
            },
            extra_link_args=["-fopenmp"],
        )
    print(f"dropgrad_cuda: building the CPU kernels only ({why})")
    return cpp_extension.CppExtension(
        "dropgrad_cuda._C", sources, include_dirs=[include] if include else [], extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp"]
    )


setup(
    name="dropgrad_cuda",
    version="0.2.0",
    description="Fused, exactly reproducible kernels for DropGrad, Meta-Dropout and CML meta-learning",
    # Every subpackage (integrations, examples); the Triton sources install inside dropgrad_cuda.
    packages=find_packages(include=["dropgrad_cuda", "dropgrad_cuda.*"]) + ["dropgrad_cuda.triton_kernels"],
    package_dir={"dropgrad_cuda.triton_kernels": "triton_kernels"},
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
    python_requires=">=3.10",
    # The releases the package is tested with (scripts/compat.sh; the README's table). The C++
    # extension links against the torch it is built with: build with --no-build-isolation.
    install_requires=["torch>=2.11,<2.16"],
    extras_require={"examples": ["matplotlib", "tqdm", "pillow"], "higher": ["higher"], "interpreter": ["numpy"]},
)
