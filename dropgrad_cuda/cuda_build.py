"""What the built CUDA kernels are: architectures and per-kernel resources, read from the library
with cuobjdump (the one Triton's wheel ships), no GPU needed.

    python -m dropgrad_cuda.cuda_build               the resource table of every kernel and arch
    python -m dropgrad_cuda.cuda_build --sass        the per-element instruction counts of every CUDA
                                                     kernel and of the AOT-compiled Triton kernels,
                                                     and the predicted bound on A100, H100 and H200
    python -m dropgrad_cuda.cuda_build --sass --update-doc    writes that into docs/gpu.md
"""
import os
import re
import subprocess
import sys

import triton

from . import _C


def cuobjdump():
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def resource_usage(library=_C.__file__):
    """[(arch, kernel, registers, stack bytes, local bytes)] for every CUDA kernel in the library."""
    out = subprocess.run([cuobjdump(), "--dump-resource-usage", library], capture_output=True, text=True,
                         check=True).stdout
    rows, arch, kernel = [], None, None
    for line in out.splitlines():
        if m := re.match(r"\s*arch = (sm_\d+)", line):
            arch = m.group(1)
        elif m := re.match(r"\s*Function (\S+):", line):
            kernel = m.group(1)
        elif m := re.match(r"\s*REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", line):
            rows.append((arch, _short(kernel), int(m.group(1)), int(m.group(2)), int(m.group(3))))
    return rows


def _short(mangled):
    """'_ZN7dg_cuda3runINS_7kernels28meta_dropout_backward_kernelI13__nv_bfloat16EEEvT_' ->
    'meta_dropout_backward_kernel<__nv_bfloat16>': the length-prefixed name ending in _kernel and
    its template argument, if any."""
    for m in re.finditer(r"\d+", mangled):
        end = m.end() + int(m.group())
        name = mangled[m.end():end]
        if not re.fullmatch(r"[a-z]\w*_kernel", name):
            continue
        rest = mangled[end:]
        if t := re.match(r"I([fd])E", rest):
            return f"{name}<{ {'f': 'float', 'd': 'double'}[t.group(1)]}>"
        if t := re.match(r"I(\d+)", rest):
            return f"{name}<{rest[t.end():t.end() + int(t.group(1))]}>"
        return name
    return mangled


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sass", action="store_true", help="instruction counts and predicted bounds (see docs/gpu.md)")
    ap.add_argument("--update-doc", action="store_true", help="with --sass: write the tables into docs/gpu.md")
    args = ap.parse_args(argv)
    if args.sass:
        from . import sass

        text = sass.report()
        print(text)
        if args.update_doc:
            sass.update_doc(text)
        return 0
    rows = resource_usage()
    print("| arch | kernel | registers | stack bytes | local (spill) bytes |\n| --- | --- | ---: | ---: | ---: |")
    for r in rows:
        print("| " + " | ".join(map(str, r)) + " |")
    return 0 if rows and all(r[3] == 0 and r[4] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
