"""Compile every Triton kernel of the package ahead of time for one GPU architecture, no GPU needed.

    python -m dropgrad_cuda.triton_kernels.aot --arch 80      (or 90)

Prints one line per kernel and configuration with the registers and spill bytes that Triton's
bundled ptxas reports, and exits non-zero if any compilation fails or spills.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.compiler import ASTSource

from . import kernels as K
from .configs import configurations

def compile_for(fn, sig, constexprs, arch, num_warps=K.NUM_WARPS, fp_fusion=False, aligned=False):
    """triton.compile for sm_<arch>. aligned: the specialization the launcher gives 16-byte aligned
    tensors of a numel that is a multiple of 16 (every pointer and the count `n`/`xnumel`
    divisible by 16), which is what a launch on such tensors runs."""
    attrs = {(i,): [["tt.divisibility", 16]] for i, (a, t) in enumerate(sig.items())
             if t.startswith("*") or a in ("n", "xnumel")} if aligned else None
    return triton.compile(ASTSource(fn, sig, constexprs, attrs), target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": num_warps, "enable_fp_fusion": fp_fusion})


def resources(ptx, arch):
    """(registers, spill store bytes, spill load bytes) from ptxas -v on the kernel's PTX."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as fh:
            fh.write(ptx)
        out = subprocess.run([get_ptxas(arch).path, "-v", f"--gpu-name=sm_{arch}a" if arch == 90 else f"--gpu-name=sm_{arch}",
                              path, "-o", os.path.join(tmp, "k.cubin")], capture_output=True, text=True, check=True).stderr
    regs = int(re.search(r"Used (\d+) registers", out).group(1))
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", out)
    return regs, int(spills.group(1)), int(spills.group(2))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", type=int, choices=(80, 90), required=True, help="compute capability, e.g. 90 for H100")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("unset TRITON_INTERPRET: the interpreter replaces the compiler")
    failed = 0
    for name, fn, sig, constexprs in configurations():
        try:
            compiled = compile_for(fn, sig, constexprs, args.arch)
            regs, st, ld = resources(compiled.asm["ptx"], args.arch)
            ok = st == 0 and ld == 0
            print(f"sm_{args.arch} {name}: {regs} registers, {st} bytes spill stores, {ld} bytes spill loads"
                  f"{'' if ok else '  SPILLS'}")
            failed += not ok
        except Exception as e:  # report every kernel, then fail
            print(f"sm_{args.arch} {name}: FAILED {type(e).__name__}: {e}".splitlines()[0])
            failed += 1
    print(f"sm_{args.arch}: {failed} failed or spilled")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
