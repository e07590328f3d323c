"""Our fused kernels against the kernels torch.compile writes for the same eager forms, counted
from the SASS on sm_90 (and sm_80), no GPU needed; predicted on A100, H100 and H200.

    python -m benchmarks.compile_sass [--update-doc]

torch.compile cannot generate a CUDA kernel on a machine without a CUDA driver, so the kernels
below are copies of what Inductor's Triton lowering writes for each eager form, following the
installed torch's `torch/_inductor` (written against 2.14.1): a 1-D pointwise kernel of
XBLOCK = 1024 elements and 4 warps (its pointwise heuristic for a large tensor), the seed loaded
from the graph's seed buffer, `randn` as `triton_helpers.randn4x` (`TritonOverrides.randn`: a
1-D CUDA kernel draws one Philox call for four elements), `normal_(mean, std)` as
`std * randn + mean` (`decomposition.normal`), softplus as `where(x > 20, x, log1p(exp(x)))`
(`torch._refs`) with libdevice's `exp` and `log1p` (`use_fast_math` off), Triton's default FP
fusion, and the same argument specialization (16-byte aligned pointers, an element count that is
a multiple of 16) that our Triton kernels are counted with. The helpers are imported from the
installed torch, so a newer torch's random or math helpers are what is compiled.

Ours: the CUDA kernels of the built library (float32) and the Triton kernels' predicted launches,
as `python -m dropgrad_cuda.cuda_build --sass` counts them. The eager forms are
benchmarks/cases.py's.
"""
import argparse
import sys

import triton
import triton.language as tl
from torch._inductor.runtime import triton_helpers
from torch._inductor.runtime.triton_helpers import libdevice

from dropgrad_cuda import sass
from dropgrad_cuda._table import ELEMENTS_MOVED

from .models import SIGMA

XBLOCK, NUM_WARPS = 1024, 4
# The eager forms' constants, literals in Inductor's kernels (benchmarks/models.py's p = 0.1).
SIGMA, LR = tl.constexpr(SIGMA), tl.constexpr(0.01)


@triton.jit
def _randn(seed_ptr, x0, XBLOCK: tl.constexpr):
    # tmp0 = tl.load(in_ptr0 + load_seed_offset); tmp2 = triton_helpers.randn4x(tmp0, (x0).to(tl.uint32), XBLOCK)
    return triton_helpers.randn4x(tl.load(seed_ptr), x0.to(tl.uint32), XBLOCK)


@triton.jit
def noise_kernel(seed_ptr, out_ptr0, xnumel, XBLOCK: tl.constexpr):
    # torch.empty_like(g).normal_(1, SIGMA)
    x0 = tl.program_id(0) * XBLOCK + tl.arange(0, XBLOCK)
    xmask = x0 < xnumel
    tl.store(out_ptr0 + x0, _randn(seed_ptr, x0, XBLOCK) * SIGMA + 1.0, xmask)


@triton.jit
def drop_grad_kernel(seed_ptr, in_ptr0, out_ptr0, xnumel, XBLOCK: tl.constexpr):
    # g * torch.empty_like(g).normal_(1, SIGMA)
    x0 = tl.program_id(0) * XBLOCK + tl.arange(0, XBLOCK)
    xmask = x0 < xnumel
    g = tl.load(in_ptr0 + x0, xmask)
    tl.store(out_ptr0 + x0, g * (_randn(seed_ptr, x0, XBLOCK) * SIGMA + 1.0), xmask)


@triton.jit
def dropgrad_update_kernel(seed_ptr, in_ptr0, in_ptr1, out_ptr0, xnumel, XBLOCK: tl.constexpr):
    # w - LR * (g * torch.empty_like(g).normal_(1, SIGMA))
    x0 = tl.program_id(0) * XBLOCK + tl.arange(0, XBLOCK)
    xmask = x0 < xnumel
    w = tl.load(in_ptr0 + x0, xmask)
    g = tl.load(in_ptr1 + x0, xmask)
    tl.store(out_ptr0 + x0, w - LR * (g * (_randn(seed_ptr, x0, XBLOCK) * SIGMA + 1.0)), xmask)


@triton.jit
def meta_dropout_kernel(seed_ptr, in_ptr0, in_ptr1, out_ptr0, xnumel, XBLOCK: tl.constexpr):
    # f * F.softplus(a + torch.randn_like(a))
    x0 = tl.program_id(0) * XBLOCK + tl.arange(0, XBLOCK)
    xmask = x0 < xnumel
    f = tl.load(in_ptr0 + x0, xmask)
    a = tl.load(in_ptr1 + x0, xmask)
    x = a + _randn(seed_ptr, x0, XBLOCK)
    tl.store(out_ptr0 + x0, f * tl.where(x > 20.0, x, libdevice.log1p(libdevice.exp(x))), xmask)


# op: (kernel, its pointer arguments after the seed). dropgrad_step's eager form is the update over
# a list (one such kernel a tensor, or Inductor's foreach kernel of the same body); the meta-dropout
# backwards are not compared: torch.compile saves the forward's noise and its backward kernels read
# it (no Philox), a trade of bytes for instructions that these counts do not show.
COMPILED = {"noise": (noise_kernel, 1), "drop_grad": (drop_grad_kernel, 2),
            "dropgrad_update": (dropgrad_update_kernel, 3), "dropgrad_step": (dropgrad_update_kernel, 3),
            "meta_dropout": (meta_dropout_kernel, 3)}


def compiled_counts(arch):
    """{op: per-element class counts} of the torch.compile copies on sm_<arch>."""
    out = {}
    for op, (fn, pointers) in COMPILED.items():
        sig = {"seed_ptr": "*i64", **{a: "*fp32" for a in list(fn.arg_names)[1:1 + pointers]}, "xnumel": "i32",
               "XBLOCK": "constexpr"}
        out[op] = sass.triton_counts(fn, sig, {"XBLOCK": XBLOCK}, arch, NUM_WARPS, XBLOCK // (32 * NUM_WARPS),
                                     fp_fusion=True)
    return out


BEGIN, END = "<!-- torch.compile tables: python -m benchmarks.compile_sass --update-doc -->", \
    "<!-- end of torch.compile tables -->"


def report():
    cuda = sass.cuda_kernels()
    ours_cuda = {op: sass.fused_float32(cuda, op) for op in COMPILED}
    ours_triton = sass.triton_kernels()
    compiled = {f"sm_{a}": compiled_counts(a) for a in (80, 90)}
    total = lambda c: sum(c.values())  # noqa: E731
    lines = ["Instructions a thread executes per element (float32; Gaussian noise for the DropGrad ops), "
             "counted from the SASS; the ratio is ours over torch.compile's (target: at most 0.80).", "",
             "| op | arch | torch.compile (its FP32) | ours, CUDA (its FP32) | CUDA / compile "
             "| ours, Triton (its FP32) | Triton / compile |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for op in COMPILED:
        for arch in ("sm_80", "sm_90"):
            c, u = compiled[arch][op], ours_cuda[op][arch]
            t = ours_triton[(arch, op)]
            lines.append(f"| {op} | {arch} | {total(c):.1f} ({c['fp32']:.1f}) | {total(u):.1f} ({u['fp32']:.1f}) | "
                         f"{total(u) / total(c):.2f} | {total(t):.1f} ({t['fp32']:.1f}) | {total(t) / total(c):.2f} |")
    lines += ["", "Predicted, not measured (dropgrad_cuda/sass.py's model): the bound and the share of the memory "
              "roofline of each, at the bytes the fused op moves.", "",
              "| op | bytes/element | " + " | ".join(f"{g} {b}" for g in sass.GPUS for b in ("compile", "CUDA", "Triton"))
              + " |", "| --- | ---: | " + " | ".join("---" for _ in sass.GPUS for _ in range(3)) + " |"]
    for op in COMPILED:
        nbytes = 4 * ELEMENTS_MOVED[op]
        cells = []
        for gpu, g in sass.GPUS.items():
            a = g["arch"]
            for counts in (compiled[a][op], ours_cuda[op][a], ours_triton[(a, op)]):
                bound, share = sass.predict(counts, nbytes, gpu)
                cells.append(f"{bound} {100 * share:.0f}%")
        lines.append(f"| {op} | {nbytes} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--update-doc", action="store_true", help="write the tables into docs/gpu.md")
    args = ap.parse_args(argv)
    text = report()
    print(text)
    if args.update_doc:
        sass.update_doc(text, begin=BEGIN, end=END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
