"""The reference as a namespace of kernel ops, called as dropgrad_cuda.ops calls every backend's
(`drop_grad.default(grad, p, mode, seed, offset, rng_state)`, as on torch.ops.dropgrad): the
schemas of csrc/ops.cpp, mode as its int, over the plain-PyTorch ops of reference.py. Its
autograd is PyTorch's own; it takes no rng_state (no CUDA generator reservation, no compiled
seed: dropgrad_cuda.ops gives it an int seed) and has no batching rule (ops.py refuses its noise
under vmap)."""
import torch

from . import _checks
from ._table import OP_NAMES
from . import reference as R

_MODE_NAMES = {v: k for k, v in R.MODES.items()}


def _no_state(rng_state):
    if rng_state is not None:
        raise RuntimeError("backend='reference' takes an int seed, not an rng_state tensor")


def philox4x32_10(counter, key):
    return R.philox4x32_10(counter, key)


def noise(like, p, mode, seed, offset, rng_state=None):
    _checks.stream(p, mode, offset, like.numel())
    _no_state(rng_state)
    return R._noise_like(like, p, _MODE_NAMES[mode], seed, offset, torch.float32)


def drop_grad(grad, p, mode, seed, offset, rng_state=None):
    _checks.stream(p, mode, offset, grad.numel())
    _checks.dtype(grad, "grad")
    _no_state(rng_state)
    return R.drop_grad(grad, p, _MODE_NAMES[mode], seed=seed, offset=offset)


def dropgrad_update(param, grad, lr_tensor, lr, p, mode, seed, offset, rng_state=None):
    _checks.stream(p, mode, offset, param.numel())
    _checks.pair(param, grad, "param", "grad")
    if lr_tensor is not None:
        _checks.lr(lr_tensor, param, "lr")
    _no_state(rng_state)
    return R.dropgrad_update(param, grad, lr if lr_tensor is None else lr_tensor, p, _MODE_NAMES[mode], seed=seed,
                             offset=offset)


def dropgrad_step(params, grads, lrs, lr, p, mode, seed, offset, rng_state=None, batch=0):
    _checks.list_stream(p, mode, offset, params)
    _checks.lists(params, grads, lrs, batch)
    _no_state(rng_state)
    if not batch:
        return R.dropgrad_step(params, grads, lrs or lr, p, _MODE_NAMES[mode], seed=seed, offset=offset)
    # A batch of lists: list b at offset + b * span(list), with its row of a per-list lr.
    list_span = sum(R.span(w[0].numel()) for w in params)
    rows = [dropgrad_step([w[b] for w in params], [g[b] for g in grads],
                          [l[b] if l.dim() == w.dim() else l for l, w in zip(lrs, params)], lr, p, mode, seed,
                          offset + b * list_span) for b in range(batch)]
    return [torch.stack(ts) for ts in zip(*rows)]


def dropgrad_step_(params, grads, lrs, lr, weight_decay, p, noise_mode, seed, offset, rng_state=None):
    _checks.list_stream(p, noise_mode, offset, params)
    _checks.lists(params, grads, lrs, 0)
    _no_state(rng_state)
    R.dropgrad_step_(params, grads, lrs or lr, p, _MODE_NAMES[noise_mode], seed=seed, offset=offset,
                     weight_decay=weight_decay)


def meta_dropout(f, a, deterministic, seed, offset, rng_state=None):
    _checks.eps_stream(deterministic, offset, f)
    _checks.pair(f, a, "f", "a")
    _no_state(rng_state)
    return R.meta_dropout(f, a, deterministic=deterministic, seed=seed, offset=offset)


def meta_dropout_backward(grad_out, f, a, deterministic, seed, offset, rng_state=None):
    _checks.eps_stream(deterministic, offset, f)
    _no_state(rng_state)
    return R.meta_dropout_backward(grad_out, f, a, deterministic=deterministic, seed=seed, offset=offset)


def meta_dropout_double_backward(grad_grad_f, grad_grad_a, grad_out, f, a, deterministic, seed, offset,
                                 rng_state=None):
    _checks.eps_stream(deterministic, offset, f)
    _no_state(rng_state)
    return R.meta_dropout_double_backward(grad_grad_f, grad_grad_a, grad_out, f, a, deterministic=deterministic,
                                          seed=seed, offset=offset)


for _name in OP_NAMES:
    globals()[_name].default = globals()[_name]  # each op called like a torch.ops overload
