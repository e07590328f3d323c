"""What the benchmarks time. Each op as the fused kernel, the eager form of the published code,
torch.compile of that eager form and, for the updates, the floor: a plain torch.add (a
torch._foreach_add for lists), which moves the same bytes with no noise. The optimizer step
(DropGradSGD) against torch.optim.SGD with the eager noise, and plain SGD as its floor.

DROPGRAD_BENCH_FULL=1 (the report's --full) adds 4K, 1M and 64M elements and bfloat16."""
import math
import os

import torch

import dropgrad_cuda as dg
from dropgrad_cuda._table import ELEMENTS_MOVED
from benchmarks.models import P, SIGMA, conv4_shapes, eager_meta_dropout_block, published_dropgrad_step, \
    resnet18_shapes, tensors

FULL = os.environ.get("DROPGRAD_BENCH_FULL") == "1"
LR = 0.01
SIZES = {"112K": 112_000, "11M": 11_000_000, **({"4K": 4_000, "1M": 1_000_000, "64M": 64_000_000} if FULL else {})}
MD_SIZES = {**SIZES, "22M": 22_000_000}
DTYPES = [torch.float32, torch.bfloat16] if FULL else [torch.float32]
LISTS = {"conv4-list": conv4_shapes, "resnet18-list": resnet18_shapes}


# The eager forms: the published DropGrad code (methods/drop_grad.py) and meta-dropout's forward.
def eager_noise(g, mode):
    if mode == "gaussian":
        return torch.empty_like(g).normal_(1, SIGMA)
    return (torch.rand_like(g) > P).to(g.dtype) / (1 - P)


def eager_drop_grad(g, mode):
    return g * eager_noise(g, mode)


def eager_update(w, g, mode):
    return w - LR * (g * eager_noise(g, mode))


def eager_meta_dropout(f, a):
    return eager_meta_dropout_block(f, a, False)


def optimizer_step(impl, ws, gs, wd=5e-4, backend="auto"):
    """One optimizer step with weight decay over a parameter list: DropGradSGD (one fused in-place
    pass), torch.optim.SGD(foreach=True) after the published eager noise is put on .grad, and the
    plain SGD(foreach=True) step as the floor."""
    from dropgrad_cuda.optim import DropGradSGD

    params = [torch.nn.Parameter(w) for w in ws]
    for w, g in zip(params, gs):
        w.grad = g
    if impl not in ("eager", "floor"):
        return DropGradSGD(params, lr=LR, p=P, weight_decay=wd, backend=backend).step
    opt = torch.optim.SGD(params, lr=LR, weight_decay=wd, foreach=True)
    if impl == "floor":
        return opt.step

    def eager():
        for w, g in zip(params, gs):
            w.grad = g * eager_noise(g, "gaussian")
        opt.step()
    return eager


_compiled = {}


def compiled(fn):
    """torch.compile(fn) specialized to each case's shapes, dtypes and mode: up to 5 sizes x 2
    dtypes x 2 modes here, beyond dynamo's default of 8 graphs a function (past which it would
    quietly run the eager code)."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    if fn not in _compiled:
        _compiled[fn] = torch.compile(fn, dynamic=False)
    return _compiled[fn]


class Case:
    """One benchmark row: `make()` builds the inputs and returns the thunk to time."""

    def __init__(self, op, size, impl, dtype, make):
        self.op, self.size, self.impl, self.dtype, self.make = op, size, impl, dtype, make

    @property
    def id(self):
        return f"{self.op}|{self.size}|{str(self.dtype).split('.')[-1]}|{self.impl}"


def _flat(n, k, dtype, grad=False, device="cpu"):
    """k inputs of n elements, drawn on the device itself (64M draws on a CPU cost a GPU run seconds)."""
    g = torch.Generator(device).manual_seed(0)
    return [torch.randn(n, generator=g, device=device).to(dtype).requires_grad_(grad) for _ in range(k)]


def _fwd_bwd(fn, f, a, gout):
    def run():
        fn(f, a).backward(gout)
    return run


# The fused kernels each benchmark row runs, for its bytes moved (dropgrad_cuda._table.ELEMENTS_MOVED).
KERNELS = {"optimizer_step": ["dropgrad_step"], "meta_dropout/fwd": ["meta_dropout"],
           "meta_dropout/fwd+bwd": ["meta_dropout", "meta_dropout_backward"]}


def bytes_per_element(op, dtype):
    base = op.split("/")[0]
    kernels = KERNELS.get(op) or KERNELS.get(base) or [base]
    return sum(ELEMENTS_MOVED[k] for k in kernels) * dtype.itemsize


def numel(size):
    """Elements of a case's size: a parameter list's total, or a flat size such as "112K" or "64M"."""
    if size in LISTS:
        return sum(math.prod(s) for s in LISTS[size]())
    return int(float(size[:-1]) * {"K": 1e3, "M": 1e6}[size[-1]])


def cases(sizes=None, md_sizes=None, dtypes=None, device="cpu", fused=None, lists=True, with_compile=True,
          compile_sizes=None):
    """Every benchmark row. fused: {impl name: backend} of the fused rows (the CPU report: one
    "fused" row on the default backend; the GPU report: one per GPU backend). compile_sizes: the
    sizes that get a torch.compile row (default: all; each is a compile of its own)."""
    sizes, md_sizes, dtypes = sizes or SIZES, md_sizes or MD_SIZES, dtypes or DTYPES
    fused = fused or {"fused": "auto"}
    flat = lambda n, k, dtype, grad=False: _flat(n, k, dtype, grad, device)  # noqa: E731
    out = []
    keep = lambda c: c.impl != "compile" or (with_compile and (compile_sizes is None or c.size in compile_sizes))  # noqa: E731
    for (size, n), dtype in ((s, d) for s in sizes.items() for d in dtypes):
        for mode in ("gaussian", "bernoulli"):
            def upd(impl, mode=mode, n=n, dtype=dtype):
                w, g = flat(n, 2, dtype)
                if impl in fused:
                    return lambda: dg.dropgrad_update(w, g, LR, P, mode, backend=fused[impl])
                return {"eager": lambda: eager_update(w, g, mode),
                        "compile": lambda: compiled(eager_update)(w, g, mode),
                        "floor": lambda: torch.add(w, g, alpha=-LR)}[impl]

            def drop(impl, mode=mode, n=n, dtype=dtype):
                (g,) = flat(n, 1, dtype)
                if impl in fused:
                    return lambda: dg.drop_grad(g, P, mode, backend=fused[impl])
                return {"eager": lambda: eager_drop_grad(g, mode), "compile": lambda: compiled(eager_drop_grad)(g, mode)}[impl]

            out += [Case(f"dropgrad_update/{mode}", size, i, dtype, lambda i=i, u=upd: u(i))
                    for i in (*fused, "eager", "compile", "floor")]
            out += [Case(f"drop_grad/{mode}", size, i, dtype, lambda i=i, d=drop: d(i)) for i in (*fused, "eager", "compile")]
    for (size, n), dtype in ((s, d) for s in md_sizes.items() for d in dtypes):
        impls = {**{i: (lambda f, a, b=b: dg.meta_dropout(f, a, backend=b)) for i, b in fused.items()},
                 "eager": eager_meta_dropout, "compile": lambda f, a: compiled(eager_meta_dropout)(f, a)}
        for impl, fn in impls.items():
            out.append(Case("meta_dropout/fwd", size, impl, dtype,
                            lambda fn=fn, n=n, dtype=dtype: (lambda f, a: lambda: fn(f, a))(*flat(n, 2, dtype))))
            out.append(Case("meta_dropout/fwd+bwd", size, impl, dtype,
                            lambda fn=fn, n=n, dtype=dtype: _fwd_bwd(fn, *flat(n, 2, dtype, True), *flat(n, 1, dtype))))
    if not lists:
        return list(filter(keep, out))
    for size, shapes in {**LISTS, "11M": lambda: [(11_000_000,)]}.items():
        def opt(impl, shapes=shapes):
            ws, gs = tensors(shapes(), 0, device=device), tensors(shapes(), 1, device=device)
            return optimizer_step(impl, ws, gs, backend=fused.get(impl, "auto"))

        out += [Case("optimizer_step/gaussian", size, i, torch.float32, lambda i=i, o=opt: o(i))
                for i in (*fused, "eager", "floor")]
    for size, shapes in LISTS.items():
        def step(impl, shapes=shapes):
            ws, gs = tensors(shapes(), 0, device=device), tensors(shapes(), 1, device=device)
            if impl in fused:
                return lambda: dg.dropgrad_step(ws, gs, LR, P, "gaussian", backend=fused[impl])
            return {"eager": lambda: published_dropgrad_step(ws, gs, LR),
                    "compile": lambda: compiled(published_dropgrad_step)(ws, gs, LR),
                    "floor": lambda: torch._foreach_add(ws, gs, alpha=-LR)}[impl]

        out += [Case("dropgrad_step/gaussian", size, i, torch.float32, lambda i=i, s=step: s(i))
                for i in (*fused, "eager", "compile", "floor")]
    return list(filter(keep, out))
