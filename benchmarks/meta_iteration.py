"""End to end: one second-order MAML meta-iteration (Conv-4, 5-way 5-shot, 15 queries, 5 inner
steps, 4 tasks) with no regularizer, the published eager DropGrad, and the fused step; the bytes
each inner update keeps for backward; the peak memory of a meta-iteration; memory bandwidth."""
import contextlib
import os
import statistics
import subprocess
import sys
import time

import torch
from torch.autograd.graph import saved_tensors_hooks
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.models import conv4_forward, conv4_shapes, few_shot_tasks, fused_step, meta_iteration, plain_step, \
    published_dropgrad_step, tensors

VARIANTS = {"none": plain_step, "eager DropGrad": published_dropgrad_step, "fused DropGrad": fused_step}


def _params():
    return [t.requires_grad_() for t in tensors(conv4_shapes())]


def _timed(step, spent):
    def run(*args):
        t0 = time.perf_counter()
        out = step(*args)
        spent.append(time.perf_counter() - t0)
        return out
    return run


def time_meta_iterations(rounds=3):
    """Per variant: median seconds of a whole meta-iteration, and median seconds inside its inner
    updates (forward; their backward is inside the meta-iteration's). Rounds are interleaved so
    drift hits every variant alike; the update's own time is what run-to-run drift of several
    percent in the whole cannot hide."""
    torch.set_num_threads(2)
    params, tasks = _params(), few_shot_tasks()
    whole, inner = {k: [] for k in VARIANTS}, {k: [] for k in VARIANTS}
    for step in VARIANTS.values():  # warm-up
        meta_iteration(step, params, tasks)
    for _ in range(rounds):
        for name, step in VARIANTS.items():
            spent = []
            t0 = time.perf_counter()
            meta_iteration(_timed(step, spent), params, tasks)
            whole[name].append(time.perf_counter() - t0)
            inner[name].append(sum(spent))
    return {k: (statistics.median(whole[k]), statistics.median(inner[k])) for k in VARIANTS}


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


def fused_dropgrad_share():
    """(seconds in the fused DropGrad ops, seconds of the whole meta-iteration) for one profiled
    meta-iteration: the step's forward calls plus every evaluation of its backward nodes (first
    and second order), from torch.profiler. Events are summed without removing nesting, so this
    is an upper bound on the regularizer's cost that run-to-run drift of the whole cannot hide."""
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(2)
    params, tasks = _params(), few_shot_tasks()
    meta_iteration(fused_step, params, tasks)
    with _native_output_silenced(), profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        meta_iteration(fused_step, params, tasks)
        whole = time.perf_counter() - t0
    inside = sum(e.cpu_time_total for e in prof.key_averages()
                 if e.key == "dropgrad::dropgrad_step" or ("dropgrad" in e.key and "Backward" in e.key))
    return inside / 1e6, whole


def saved_bytes_per_inner_step():
    """(all bytes, bytes that are not the update's inputs) saved for backward by one inner update
    of the Conv-4 list under create_graph, i.e. what second-order MAML keeps per inner step."""
    params, (xs, ys, _, _) = _params(), few_shot_tasks(n_tasks=1)[0]
    loss = torch.nn.functional.cross_entropy(conv4_forward(params, xs), ys)
    grads = list(torch.autograd.grad(loss, params, create_graph=True))
    inputs = {t.data_ptr() for t in params + grads}
    out = {}
    for name, step in VARIANTS.items():
        saved = []
        with saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            step(params, grads, 0.01)
        unique = {t.data_ptr(): t for t in saved}
        total = sum(t.numel() * t.element_size() for t in unique.values())
        extra = sum(t.numel() * t.element_size() for p, t in unique.items() if p not in inputs)
        out[name] = (total, extra)
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


def peak_heap_mb(variant):
    """Peak heap memory of one meta-iteration of `variant` above what was allocated before it
    (parameters and tasks), in a fresh process, sampled after every op of forward and backward."""
    code = ("import torch\n"
            "from benchmarks.meta_iteration import VARIANTS, _HeapPeak, _params\n"
            "from benchmarks.models import few_shot_tasks, meta_iteration\n"
            "torch.set_num_threads(2)\n"
            "params, tasks = _params(), few_shot_tasks()\n"
            "with _HeapPeak() as m:\n"
            f"    meta_iteration(VARIANTS[{variant!r}], params, tasks)\n"
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
    print("meta-iteration seconds:", time_meta_iterations())
    print("saved bytes per inner step:", saved_bytes_per_inner_step())
    print("peak heap MB:", {v: peak_heap_mb(v) for v in VARIANTS})
    print("bandwidth GB/s:", memory_bandwidth_gbs())


if __name__ == "__main__":
    main()
