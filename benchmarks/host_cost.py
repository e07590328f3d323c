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

import dropgrad_cuda as dg

from .interleave import interleaved, ratio_interval
from .models import P, published_update
from .vmap_meta_batch import conv4_variants

LR, N, CALLS, ROUNDS = 0.01, 10, 2000, 15


def _eager_md(f, a):
    return f * F.softplus(a + torch.randn_like(a))


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
    conv4 = conv4_variants()  # the main job's vmap table's Conv-4 row, its 4 tasks and LR
    return {
        "dropgrad_update, no grad": {"fused": lambda: dg.dropgrad_update(w, gr, LR, P),
                                     "eager": lambda: published_update(w, gr, LR), "torch.add": lambda: torch.add(w, gr, alpha=-LR)},
        "dropgrad_update, param requires grad": {"fused": lambda: dg.dropgrad_update(wr, gr, LR, P),
                                                 "eager": lambda: published_update(wr, gr, LR)},
        "meta_dropout, no grad": {"fused": lambda: dg.meta_dropout(f, a), "eager": lambda: _eager_md(f, a)},
        "meta_dropout, requires grad": {"fused": lambda: dg.meta_dropout(fr, ar), "eager": lambda: _eager_md(fr, ar)},
        "meta_dropout forward + create_graph backward": {"fused": _md_double(dg.meta_dropout, fr, ar),
                                                         "eager": _md_double(_eager_md, fr, ar)},
        "dropgrad_step, 18 tiny tensors": {
            "fused": lambda: dg.dropgrad_step(small, small_g, LR, P),
            "eager": lambda: [published_update(x, y, LR) for x, y in zip(small, small_g)],
            "torch._foreach_add": lambda: torch._foreach_add(small, small_g, alpha=-LR)},
        "vmap over 4 tasks, Conv-4 list, one step": {
            "fused": conv4["vmap, fused"], "eager": conv4["vmap, eager published"],
            "loop of 4 fused calls": conv4["loop, fused"]},
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
