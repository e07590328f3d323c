"""A meta-batch adapted under torch.func.vmap against the per-task loop, fused and eager.

Variants run interleaved round by round (ABCABC...) after warm-up; each row reports the median
time and the 95% interval (Student's t over the rounds) of the paired ratio to the loop.
- Conv-4 list, 4 tasks: one DropGrad step of every task's Conv-4 parameter list (stacked along a
  task dimension): a loop of `dropgrad_step` calls vs one `dropgrad_step` under vmap vs the
  published eager update (`w - lr * (g * normal_(1, sigma))`) under the same vmap.
- the example's sinusoid net, 4 tasks: a second-order meta-batch (2 inner steps, forward and the
  meta-gradient), `meta_batch_loss` (vmap) vs the loop of `inner_step`s, and vmap with the eager update.
"""
import statistics

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

import dropgrad_cuda as dg
from dropgrad_cuda.integrations import func as dfunc

from .interleave import interleaved, ratio_interval
from .models import P, conv4_shapes, published_dropgrad_step, published_update, tensors

TASKS, LR = 4, 0.01


def conv4_variants():
    stacked = [torch.stack([t] * TASKS) for t in tensors(conv4_shapes())]
    grads = [torch.randn_like(t) for t in stacked]

    def loop():
        per = [dg.dropgrad_step([t[b] for t in stacked], [g[b] for g in grads], LR, P) for b in range(TASKS)]
        return [torch.stack(ts) for ts in zip(*per)]

    fused = vmap(lambda ws, gs: dg.dropgrad_step(ws, gs, LR, P), randomness="different")
    eager = vmap(lambda ws, gs: published_dropgrad_step(ws, gs, LR), randomness="different")
    return {"loop, fused": loop, "vmap, fused": lambda: fused(stacked, grads),
            "vmap, eager published": lambda: eager(stacked, grads)}


def sinusoid_variants():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(1, 40), torch.nn.ReLU(), torch.nn.Linear(40, 40), torch.nn.ReLU(),
                              torch.nn.Linear(40, 1))
    params = {k: v.detach().requires_grad_() for k, v in net.named_parameters()}
    g = torch.Generator().manual_seed(1)
    xs, xq = torch.randn(TASKS, 10, 1, generator=g), torch.randn(TASKS, 10, 1, generator=g)
    ys, yq = xs.sin(), xq.sin()

    def loss(p, x, y):
        return F.mse_loss(functional_call(net, p, (x,)), y)

    def loop():
        total = 0
        for b in range(TASKS):
            fast = params
            for _ in range(2):
                gs = torch.autograd.grad(loss(fast, xs[b], ys[b]), list(fast.values()), create_graph=True)
                fast = dfunc.inner_step(fast, gs, LR, P)
            total = total + loss(fast, xq[b], yq[b])
        torch.autograd.grad(total / TASKS, list(params.values()))

    def vmapped(update):
        def run():
            def task(x, y, xq_, yq_):
                fast = params
                for _ in range(2):
                    gs = grad(loss)(fast, x, y)
                    fast = update(fast, gs)
                return loss(fast, xq_, yq_)
            torch.autograd.grad(vmap(task, randomness="different")(xs, ys, xq, yq).mean(), list(params.values()))
        return run

    fused = vmapped(lambda fast, gs: dfunc.inner_step(fast, gs, LR, P))
    eager = vmapped(lambda fast, gs: {k: published_update(fast[k], gs[k], LR) for k in fast})
    return {"loop, fused": loop, "vmap, fused": fused, "vmap, eager published": eager}


def run(rounds=30):
    torch.set_num_threads(2)
    out = {}
    for case, make in (("Conv-4 list, 4 tasks, one step", conv4_variants),
                       ("sinusoid net, 4 tasks, 2 steps, 2nd order", sinusoid_variants)):
        times = interleaved(make(), rounds)
        base = times["loop, fused"]
        out[case] = {k: dict(median_ms=1e3 * statistics.median(v), loop_over=ratio_interval(base, v))
                     for k, v in times.items()}
    return out


def table(results):
    lines = ["| meta-batch | variant | median ms | loop / this (median) | 95% interval |",
             "| --- | --- | ---: | ---: | --- |"]
    for case, rows in results.items():
        for k, r in rows.items():
            med, lo, hi = r["loop_over"]
            lines.append(f"| {case} | {k} | {r['median_ms']:.3f} | {med:.2f}x | {lo:.2f}x-{hi:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(run()))
