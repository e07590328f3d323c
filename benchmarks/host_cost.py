"""Host cost: what a fused op adds on the CPU side of a call, where the kernel costs nothing.

On a GPU a MAML meta-iteration on a small model is bound by host time (hundreds of small ops
an inner step), so a fused op pays only if its call costs no more than the eager ops it replaces.
Measured here on tiny CPU tensors (10 elements, one thread), where the arithmetic is negligible
and what remains is Python, argument checks, the dispatcher and autograd. Each row's variants run
interleaved round by round (a round: `CALLS` calls of each), and each ratio to the eager form
comes with the 95% interval of the paired per-round ratio.

    python -m benchmarks.host_cost
"""
import statistics

import torch
import torch.nn.functional as F
from torch.func import vmap

import dropgrad_cuda as dg

from .interleave import interleaved, ratio_interval
from .models import P, SIGMA, conv4_shapes, tensors

LR, N, CALLS, ROUNDS = 0.01, 10, 2000, 15


def _eager_update(w, g):
    return w - LR * (g * torch.empty_like(g).normal_(1, SIGMA))


def _eager_md(f, a):
    return f * F.softplus(a + torch.randn_like(a))


def _loop(stacked, grads):
    """The per-task loop with vmap's result: each parameter's new values stacked over the tasks."""
    per = [dg.dropgrad_step([t[b] for t in stacked], [g[b] for g in grads], LR, P) for b in range(len(stacked[0]))]
    return [torch.stack(ts) for ts in zip(*per)]


def _md_double(fn, f, a):
    def run():
        h = fn(f, a)
        torch.autograd.grad(h.sum(), (f, a), create_graph=True)
    return run


def rows():
    """{row: {variant: thunk}}; the first variant is the fused op, the second the eager form it replaces."""
    g = torch.Generator().manual_seed(0)
    w, gr, f, a = (torch.randn(N, generator=g) for _ in range(4))
    wr, fr, ar = (t.clone().requires_grad_() for t in (w, f, a))
    small = [torch.randn(s, generator=g) * 0.1 for s in [(3,)] * 18]
    small_g = [torch.randn_like(t) for t in small]
    stacked = [torch.stack([t] * 4) for t in tensors(conv4_shapes())]
    stacked_g = [torch.randn_like(t) for t in stacked]
    vfused = vmap(lambda ws, gs: dg.dropgrad_step(ws, gs, LR, P), randomness="different")
    veager = vmap(lambda ws, gs: [_eager_update(x, y) for x, y in zip(ws, gs)], randomness="different")
    return {
        "dropgrad_update, no grad": {"fused": lambda: dg.dropgrad_update(w, gr, LR, P),
                                     "eager": lambda: _eager_update(w, gr), "torch.add": lambda: torch.add(w, gr, alpha=-LR)},
        "dropgrad_update, param requires grad": {"fused": lambda: dg.dropgrad_update(wr, gr, LR, P),
                                                 "eager": lambda: _eager_update(wr, gr)},
        "meta_dropout, no grad": {"fused": lambda: dg.meta_dropout(f, a), "eager": lambda: _eager_md(f, a)},
        "meta_dropout, requires grad": {"fused": lambda: dg.meta_dropout(fr, ar), "eager": lambda: _eager_md(fr, ar)},
        "meta_dropout forward + create_graph backward": {"fused": _md_double(dg.meta_dropout, fr, ar),
                                                         "eager": _md_double(_eager_md, fr, ar)},
        "dropgrad_step, 18 tiny tensors": {
            "fused": lambda: dg.dropgrad_step(small, small_g, LR, P),
            "eager": lambda: [_eager_update(x, y) for x, y in zip(small, small_g)],
            "torch._foreach_add": lambda: torch._foreach_add(small, small_g, alpha=-LR)},
        "vmap over 4 tasks, Conv-4 list, one step": {
            "fused": lambda: vfused(stacked, stacked_g), "eager": lambda: veager(stacked, stacked_g),
            "loop of 4 fused calls": lambda: _loop(stacked, stacked_g)},
    }


def run(rounds=ROUNDS, calls=CALLS):
    """{row: {variant: {"us": median microseconds a call, "fused_over": (median, low, high) of
    fused / this variant over the paired rounds}}}."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        for row, variants in rows().items():
            n = max(10, calls // 20) if row.startswith("vmap") else calls

            def repeat(fn, n=n):
                return lambda: [fn() for _ in range(n)]

            times = interleaved({k: repeat(fn) for k, fn in variants.items()}, rounds, warmup=2)
            out[row] = {k: {"us": 1e6 * statistics.median(t) / n,
                            "fused_over": None if k == "fused" else ratio_interval(times["fused"], t)}
                        for k, t in times.items()}
    finally:
        torch.set_num_threads(threads)
    return out


def table(res):
    """The host-cost table: fused and eager per call, fused/eager with its interval, and the third
    variant where a row has one (the torch.add / _foreach_add floor, or the per-task loop)."""
    lines = ["| call | fused, us | eager published form, us | fused / eager (95% CI) | other variant, us | "
             "fused / other (95% CI) |", "| --- | ---: | ---: | --- | --- | --- |"]
    ci = lambda r: f"{r[0]:.2f}x ({r[1]:.2f} to {r[2]:.2f})"  # noqa: E731
    for row, r in res.items():
        others = [(k, v) for k, v in r.items() if k not in ("fused", "eager")]
        lines.append(f"| {row} | {r['fused']['us']:.1f} | {r['eager']['us']:.1f} | {ci(r['eager']['fused_over'])} | "
                     + ("; ".join(f"{k} {v['us']:.1f}" for k, v in others) or "-") + " | "
                     + ("; ".join(ci(v["fused_over"]) for _, v in others) or "-") + " |")
    return "\n".join(lines)


def main():
    print(table(run()))


if __name__ == "__main__":
    main()
