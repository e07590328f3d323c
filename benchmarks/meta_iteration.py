"""End to end: second-order MAML meta-iterations (Conv-4, 5-way 5-shot, 15 queries, 84x84, 5 inner
steps, a meta-batch of 2 tasks as MAML's 5-shot mini-ImageNet) three ways for each regularizer:

- DropGrad: plain inner updates, the published eager DropGrad update, the fused dropgrad_step;
- Meta-Dropout: plain Conv-4, the published meta-dropout blocks in eager PyTorch
  (f * softplus(a + randn_like(a))), the same blocks fused (dropgrad_cuda.meta_dropout).

Time per meta-iteration (variants interleaved round by round, paired 95% intervals), the bytes
saved for backward per inner step, peak heap, a profile of the fused ops' share, memory bandwidth."""
import contextlib
import functools
import os
import statistics
import subprocess
import sys
import time

import torch
from torch.autograd.graph import saved_tensors_hooks
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.interleave import compare, interleaved
from benchmarks.models import conv4_forward, conv4_shapes, eager_meta_dropout_block, few_shot_tasks, \
    fused_meta_dropout_block, fused_step, generator_shapes, meta_iteration, plain_step, published_dropgrad_step, \
    tensors

TASKS, LR = 2, 0.01
SHAPE = "Conv-4, 5-way 5-shot, 15 queries, 84x84, 5 inner steps, meta-batch of 2 tasks"
DROPGRAD = {"none": plain_step, "eager DropGrad": published_dropgrad_step, "fused DropGrad": fused_step}
META_DROPOUT = {"none": None, "eager Meta-Dropout": eager_meta_dropout_block,
                "fused Meta-Dropout": fused_meta_dropout_block}


class Setup:
    """One variant of one benchmark: its inner update, network forward and tensors."""

    def __init__(self, step, block, device="cpu"):
        self.params = [t.requires_grad_() for t in tensors(conv4_shapes(), device=device)]
        self.phi = [t.requires_grad_() for t in tensors(generator_shapes(), 2, device=device)]
        self.tasks = few_shot_tasks(n_tasks=TASKS, device=device)
        self.step, self.block = step, block

    def forward(self, params, x, query=False, block=None):
        return conv4_forward(params, x, query, phi=self.phi, block=block or self.block)

    def __call__(self):
        return meta_iteration(self.step, self.params, self.tasks, lr=LR, forward=self.forward)


BENCHES = {"DropGrad": {k: functools.partial(Setup, s, None) for k, s in DROPGRAD.items()},
           "Meta-Dropout": {k: functools.partial(Setup, plain_step, b) for k, b in META_DROPOUT.items()}}


def time_meta_iterations(bench, max_rounds=10, min_rounds=4, budget_s=240, progress=None, device="cpu"):
    """({variant: comparison to none}, fused compared to eager) (benchmarks.interleave.compare)
    from interleaved rounds after one warm-up round: at least min_rounds, then until every
    difference is resolved or the budget (seconds of timed rounds) is spent."""
    torch.set_num_threads(2)
    variants = {k: make(device=device) for k, make in BENCHES[bench].items()}
    if device != "cpu":  # a timed round must include the GPU's work, not just its launches
        variants = {k: (lambda fn=fn: (fn(), torch.cuda.synchronize())) for k, fn in variants.items()}
    eager, fused = f"eager {bench}", f"fused {bench}"
    times = interleaved(variants, max_rounds, warmup=1, min_rounds=min_rounds, budget_s=budget_s, progress=progress,
                        pairs=[("none", eager), ("none", fused), (eager, fused)])
    return ({k: dict(compare(times["none"], v), rounds=len(v)) for k, v in times.items()},
            compare(times[eager], times[fused]))


@contextlib.contextmanager
def _native_output_silenced():
    """Kineto writes status lines, and on a machine without a GPU an ERROR line
    ("gpuGetDeviceCount failed with code 35"), straight to the process's stdout and stderr; the
    report has nothing to learn from them."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


# The fused ops' events in a profile: each forward op and the graph nodes of its derivatives
# (named after the op, csrc/autograd.cpp). Nodes run in separate engine calls, so the events of
# one group do not nest in another's.
_NODE = "autograd::engine::evaluate_function: "
FUSED_EVENTS = {
    "DropGrad": {"forward (dropgrad_step)": ["dropgrad::dropgrad_step"],
                 "backward and double backward": [_NODE + "DropgradStepBackward", _NODE + "DropGradBackward"]},
    "Meta-Dropout": {"forward (meta_dropout)": ["dropgrad::meta_dropout"],
                     "backward (fused meta_dropout_backward)": [_NODE + "MetaDropoutBackward"],
                     "double backward (fused meta_dropout_double_backward)": [_NODE + "MetaDropoutBackwardBackward"]},
}


def fused_profile(bench):
    """({part: seconds} of the fused regularizer's ops, seconds of the whole meta-iteration) for
    one profiled fused meta-iteration (torch.profiler, CPU time of the events and what they call)."""
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(2)
    run = BENCHES[bench][f"fused {bench}"]()
    run()
    with _native_output_silenced(), profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        run()
        whole = time.perf_counter() - t0
    totals = {e.key: e.cpu_time_total / 1e6 for e in prof.key_averages()}
    return {part: sum(totals.get(k, 0.0) for k in keys) for part, keys in FUSED_EVENTS[bench].items()}, whole


def saved_bytes_per_inner_step(bench):
    """Per variant, bytes autograd keeps for second-order MAML from one inner step (support
    forward, create_graph gradient, update): {"regularizer": (all, not their inputs) of the
    distinct tensors the regularizer's calls save (the update; the four meta-dropout blocks'
    forward), "step": all the step saves}."""
    torch.set_num_threads(2)
    out = {}
    for name, make in BENCHES[bench].items():
        s = make()
        xs, ys = s.tasks[0][:2]
        saved, inside, inputs = [], [False], set()

        def flagged(fn, args, tensors):
            inside[0] = True
            inputs.update(t.data_ptr() for t in tensors)
            try:
                return fn(*args)
            finally:
                inside[0] = False

        block = (lambda f, a, q, s=s: flagged(s.block, (f, a, q), (f, a))) if s.block else None
        with saved_tensors_hooks(lambda t: saved.append((t, inside[0])) or t, lambda t: t):
            loss = torch.nn.functional.cross_entropy(s.forward(s.params, xs, block=block), ys)
            grads = list(torch.autograd.grad(loss, s.params, create_graph=True))
            if bench == "DropGrad":
                flagged(s.step, (s.params, grads, LR), s.params + grads)
            else:
                s.step(s.params, grads, LR)
        size = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
        reg = {t.data_ptr(): t for t, flag in saved if flag}
        out[name] = {"regularizer": (size(reg.values()), size(t for p, t in reg.items() if p not in inputs)),
                     "step": size({t.data_ptr(): t for t, _ in saved}.values())}
    return out


class _HeapPeak(TorchDispatchMode):
    """Peak bytes in use in glibc's heap (mallinfo2: every arena plus mmapped chunks, so tensors
    and everything else) after each op, above the level when the mode was entered."""

    def __enter__(self):
        import ctypes

        class MallInfo2(ctypes.Structure):
            _fields_ = [(f, ctypes.c_size_t) for f in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                       "fsmblks", "uordblks", "fordblks", "keepcost")]
        mallinfo2 = ctypes.CDLL(None).mallinfo2
        mallinfo2.restype = MallInfo2
        self.in_use = lambda: (lambda m: m.uordblks + m.hblkhd)(mallinfo2())
        self.base = self.peak = self.in_use()
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.peak = max(self.peak, self.in_use())
        return out


def peak_heap_mb(bench, variant):
    """Peak heap memory of one meta-iteration of `variant` above what was allocated before it
    (parameters and tasks), in a fresh process, sampled after every op of forward and backward."""
    code = ("import torch\n"
            "from benchmarks.meta_iteration import BENCHES, _HeapPeak\n"
            "torch.set_num_threads(2)\n"
            f"run = BENCHES[{bench!r}][{variant!r}]()\n"
            "with _HeapPeak() as m:\n"
            "    run()\n"
            "print(m.peak - m.base)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return int(out.split()[-1]) / 2**20


def memory_bandwidth_gbs(n=64_000_000):
    """Copy bandwidth of this machine (read + write bytes per second), 2 threads, preallocated buffers."""
    torch.set_num_threads(2)
    src, dst = torch.ones(n), torch.empty(n)
    dst.copy_(src)
    ts = []
    for _ in range(5):
        t0 = time.perf_counter()
        dst.copy_(src)
        ts.append(time.perf_counter() - t0)
    return 2 * n * 4 / statistics.median(ts) / 1e9


def main():
    for bench in BENCHES:
        print(bench, "meta-iteration:", time_meta_iterations(bench, max_rounds=3))
        print(bench, "fused profile:", fused_profile(bench))
        print(bench, "saved bytes per inner step:", saved_bytes_per_inner_step(bench))
        print(bench, "peak heap MB:", {v: peak_heap_mb(bench, v) for v in BENCHES[bench]})
    print("bandwidth GB/s:", memory_bandwidth_gbs())


if __name__ == "__main__":
    main()
