"""Compile every Triton kernel of the package ahead of time for one GPU architecture, no GPU needed.

    python -m dropgrad_cuda.triton_kernels.aot --arch 80      (or 90)

Prints one line per kernel and configuration with the registers and spill bytes that Triton's
bundled ptxas reports, and exits non-zero if any compilation fails or spills.
"""
import argparse
import itertools
import os
import re
import subprocess
import sys
import tempfile

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.compiler import ASTSource

from . import kernels as K

DTYPES = {"fp32": tl.float32, "fp64": tl.float64, "fp16": tl.float16, "bf16": tl.bfloat16}


def _acc(d):
    return tl.float64 if d == "fp64" else tl.float32


def configurations():
    """(name, kernel, signature, constexprs): every specialization the host code launches."""
    runtime = {"seed": "i64", "p": "fp32", "scale": "fp32", "sigma": "fp32"}
    for d, kind, mode, lr_full, state in itertools.product(DTYPES, (K.NOISE, K.DROP_GRAD, K.UPDATE), (0, 1, 2, 3),
                                                           (False, True), (False, True)):
        launched = {K.NOISE: d == "fp32" and not lr_full and mode != 0,  # the noise op writes float32
                    K.DROP_GRAD: not lr_full and mode != 3,
                    K.UPDATE: mode != 3}[kind]
        if not launched or (state and mode == 0):  # no noise, no stream
            continue
        sig = {"out_ptr": f"*{d}", "grad_ptr": f"*{d}", "param_ptr": f"*{d}", "lr_ptr": f"*{d if lr_full else _acc(d).name}",
               "state_ptr": "*i64", "n": "i64", "q0": "i64", **runtime, "KIND": "constexpr", "MODE": "constexpr",
               "LR_FULL": "constexpr", "ACC": "constexpr", "HAS_STATE": "constexpr"}
        yield (f"elementwise[{d},kind={kind},mode={mode},lr_full={lr_full},state={state}]", K.elementwise_kernel, sig,
               {"KIND": kind, "MODE": mode, "LR_FULL": lr_full, "ACC": _acc(d), "HAS_STATE": state})
    for d, mode, state, wd in itertools.product(DTYPES, (0, 1, 2), (False, True), (False, True)):
        if state and mode == 0:
            continue
        sig = {"table_ptr": "*i64", "block_tensor_ptr": "*i32", "state_ptr": "*i64", "wd_ptr": f"*{_acc(d).name}" if wd else "*i64", **runtime,
               "MODE": "constexpr", "DTYPE": "constexpr", "ACC": "constexpr", "HAS_STATE": "constexpr",
               "HAS_WD": "constexpr"}
        yield (f"step[{d},mode={mode},state={state},wd={wd}]", K.step_kernel, sig,
               {"MODE": mode, "DTYPE": DTYPES[d], "ACC": _acc(d), "HAS_STATE": state, "HAS_WD": wd})
    for d, noisy, state in itertools.product(DTYPES, (False, True), (False, True)):
        if state and not noisy:
            continue
        base = {"state_ptr": "*i64", "n": "i64", "seed": "i64", "q0": "i64", "NOISY": "constexpr", "ACC": "constexpr",
                "HAS_STATE": "constexpr"}
        meta = {"NOISY": noisy, "ACC": _acc(d), "HAS_STATE": state}
        yield (f"meta_dropout[{d},noisy={noisy},state={state}]", K.meta_dropout_kernel,
               {"out_ptr": f"*{d}", "f_ptr": f"*{d}", "a_ptr": f"*{d}", **base}, meta)
        yield (f"meta_dropout_backward[{d},noisy={noisy},state={state}]", K.meta_dropout_backward_kernel,
               {"gf_ptr": f"*{d}", "ga_ptr": f"*{d}", "gout_ptr": f"*{d}", "f_ptr": f"*{d}", "a_ptr": f"*{d}", **base}, meta)
        yield (f"meta_dropout_double_backward[{d},noisy={noisy},state={state}]", K.meta_dropout_double_backward_kernel,
               {**{f"{k}_ptr": f"*{d}" for k in ("dgo", "df", "da", "ggf", "gga", "gout", "f", "a")}, **base}, meta)
    yield ("philox4x32_10", K.philox_kernel, {"out_ptr": "*i64", "counter_ptr": "*i64", "key_ptr": "*i64", "n": "i64",
                                              "BLOCK": "constexpr"}, {"BLOCK": 1024})


def compile_for(fn, sig, constexprs, arch):
    return triton.compile(ASTSource(fn, sig, constexprs), target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": K.NUM_WARPS, "enable_fp_fusion": False})


def cubin(fn, sig, constexprs, arch):
    """The kernel's cubin for sm_<arch> (its SASS: dropgrad_cuda/sass.py)."""
    return compile_for(fn, sig, constexprs, arch).asm["cubin"]


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
