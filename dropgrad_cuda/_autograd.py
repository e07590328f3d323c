"""Fake (meta) implementations of the ops (and the two Python batching rules of _batching.py),
registered once for any namespace of kernels. Their autograd is C++ (csrc/autograd.cpp): every
backward calls the same namespace's ops, so backward regenerates the noise from (seed, offset) and
is itself differentiable; so are the other batching rules (csrc/batching.cpp).
"""
import torch

from . import _batching
from .reference import empty_in_layout


def register(ns, qualname_prefix):
    def q(name):
        return f"{qualname_prefix}::{name}"

    # ---- fake implementations: shapes and dtypes only, for torch.compile and opcheck ----
    @torch.library.register_fake(q("philox4x32_10"))
    def _(counter, key):
        return torch.empty_like(counter)

    if qualname_prefix == "dropgrad":  # the CUDA generator's state: [seed, offset] on the device
        @torch.library.register_fake(q("cuda_rng_state"))
        def _(like, numel):
            return torch.empty(2, dtype=torch.int64, device=like.device)

    @torch.library.register_fake(q("noise"))
    def _(like, p, mode, seed, offset, rng_state=None):
        return empty_in_layout(like, torch.float32)

    @torch.library.register_fake(q("drop_grad"))
    def _(grad, p, mode, seed, offset, rng_state=None):
        return empty_in_layout(grad)

    @torch.library.register_fake(q("dropgrad_update"))
    def _(param, grad, lr_tensor, lr, p, mode, seed, offset, rng_state=None):
        return empty_in_layout(param)

    @torch.library.register_fake(q("dropgrad_step"))
    def _(params, grads, lrs, lr, p, mode, seed, offset, rng_state=None, batch=0):
        # A meta tensor among CPU ones dispatches here, not to a kernel: refuse, as the kernels do.
        if any(t.device != params[0].device for t in (*params, *grads)):
            raise RuntimeError("params and grads must all be on one device")
        return [empty_in_layout(w, contiguous=batch > 0) for w in params]

    @torch.library.register_fake(q("dropgrad_step_"))
    def _(params, grads, lrs, lr, weight_decay, p, noise_mode, seed, offset, rng_state=None):
        if any(t.device != params[0].device for t in (*params, *grads)):
            raise RuntimeError("params and grads must all be on one device")

    @torch.library.register_fake(q("meta_dropout"))
    def _(f, a, deterministic, seed, offset, rng_state=None):
        return empty_in_layout(f)

    @torch.library.register_fake(q("meta_dropout_backward"))
    def _(grad_out, f, a, deterministic, seed, offset, rng_state=None):
        return empty_in_layout(f), empty_in_layout(f)

    @torch.library.register_fake(q("meta_dropout_double_backward"))
    def _(grad_grad_f, grad_grad_a, grad_out, f, a, deterministic, seed, offset, rng_state=None):
        return tuple(empty_in_layout(f) for _ in range(3))

    _batching.register(ns, qualname_prefix)
