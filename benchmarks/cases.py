"""What the benchmarks time: each op at the parameter counts of Conv-4 and ResNet-18, as the fused
kernel, the eager form of the published code, torch.compile of that eager form, and (for the
update) the floor torch.add(param, grad, alpha=-lr), which moves the same bytes with no noise."""
import torch
import torch.nn.functional as F

import dropgrad_cuda as dg

SIZES = {"conv4-112K": 112_000, "resnet18-11M": 11_000_000}
P, LR = 0.1, 0.01
SIGMA = (P / (1 - P)) ** 0.5


# The published DropGrad code (methods/drop_grad.py) and a meta-dropout forward, eagerly.
def eager_noise(g, mode):
    if mode == "gaussian":
        return torch.empty_like(g).normal_(1, SIGMA)
    return (torch.rand_like(g) > P).to(g.dtype) / (1 - P)


def eager_drop_grad(g, mode):
    return g * eager_noise(g, mode)


def eager_update(w, g, mode):
    return w - LR * (g * eager_noise(g, mode))


def eager_meta_dropout(f, a):
    return f * F.softplus(a + torch.randn_like(a))


_compiled = {}


def compiled(fn):
    if fn not in _compiled:
        _compiled[fn] = torch.compile(fn, dynamic=False)
    return _compiled[fn]


def fwd_bwd(fn):
    """Forward and backward of fn(f, a) against a fixed upstream gradient."""
    def run(f, a, gout):
        fn(f, a).backward(gout)
    return run


def cases():
    """(op, size name, implementation, thunk factory): a factory builds inputs and returns the thunk to time."""
    out = []
    for size, n in SIZES.items():
        def tensors(k, n=n, grad=False):
            g = torch.Generator().manual_seed(0)
            return [torch.randn(n, generator=g).requires_grad_(grad) for _ in range(k)]

        for mode in ("gaussian", "bernoulli"):
            op = f"dropgrad_update/{mode}"
            out += [
                (op, size, "fused", lambda t=tensors, m=mode: (lambda w, g: lambda: dg.dropgrad_update(w, g, LR, P, m))(*t(2))),
                (op, size, "eager", lambda t=tensors, m=mode: (lambda w, g: lambda: eager_update(w, g, m))(*t(2))),
                (op, size, "compile", lambda t=tensors, m=mode: (lambda w, g: lambda: compiled(eager_update)(w, g, m))(*t(2))),
                (op, size, "floor", lambda t=tensors: (lambda w, g: lambda: torch.add(w, g, alpha=-LR))(*t(2))),
            ]
            op = f"drop_grad/{mode}"
            out += [
                (op, size, "fused", lambda t=tensors, m=mode: (lambda g: lambda: dg.drop_grad(g, P, m))(*t(1))),
                (op, size, "eager", lambda t=tensors, m=mode: (lambda g: lambda: eager_drop_grad(g, m))(*t(1))),
                (op, size, "compile", lambda t=tensors, m=mode: (lambda g: lambda: compiled(eager_drop_grad)(g, m))(*t(1))),
            ]
        out += [
            ("meta_dropout/fwd", size, "fused", lambda t=tensors: (lambda f, a: lambda: dg.meta_dropout(f, a))(*t(2))),
            ("meta_dropout/fwd", size, "eager", lambda t=tensors: (lambda f, a: lambda: eager_meta_dropout(f, a))(*t(2))),
            ("meta_dropout/fwd", size, "compile",
             lambda t=tensors: (lambda f, a: lambda: compiled(eager_meta_dropout)(f, a))(*t(2))),
        ]
        for impl, fn in (("fused", lambda f, a: dg.meta_dropout(f, a)), ("eager", eager_meta_dropout),
                         ("compile", lambda f, a: compiled(eager_meta_dropout)(f, a))):
            out.append(("meta_dropout/fwd+bwd", size, impl,
                        lambda t=tensors, fn=fn: (lambda f, a, g: lambda: fwd_bwd(fn)(f, a, g))(*t(2, grad=True), *t(1))))
    return out
