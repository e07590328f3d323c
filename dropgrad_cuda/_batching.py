"""Batching rules of the ops for torch.func.vmap, written once for any namespace of kernels.

Each rule makes one fused kernel call on the whole batch. Its noise follows vmap's `randomness`
(docs/noise_contract.md, "Batched streams"): "different" gives batch element b the stream at
offset + b * span, span the element's stream length (its numel, or a list's total, rounded up
to 4), so the batched call equals B separate calls at those offsets; "same" gives every element
the unbatched call's noise; "error" (vmap's default) refuses an op that draws noise.
dropgrad_step's rule is C++ (csrc/batching.cpp), for the cost of its long lists.

A backward regenerates its forward's noise: at a vmap level its forward did not run under (the
vmap over cotangents of jacrev, or a user's vmap of a vjp), every element gets that same noise.
"""
import collections

import torch
from torch._functorch import pyfunctorch

from . import _C
from .reference import span

_LIBS = {}  # the IMPL libraries holding the batching kernels, kept alive
_F = torch._C._functorch
_BELOW_BATCHED = torch._C.DispatchKeySet(torch._C.DispatchKey.FuncTorchBatched)
VmapInfo = collections.namedtuple("VmapInfo", "batch_size level")


def _batching_kernel(op, rule):
    """The FuncTorchBatched kernel of op: unwraps the tensors batched at the current vmap level
    (lists element by element), runs rule(info, in_dims, *args) below that level and wraps its
    outputs at out_dims. This is what torch.library.register_vmap does, without its pytree passes
    over every argument and output, which cost several times our kernels on a parameter list
    (the private functorch calls are the same ones register_vmap makes, torch 2.11 to 2.15)."""
    def kernel(keyset, *args):
        interp = pyfunctorch.retrieve_current_functorch_interpreter()
        level = interp.level()
        plain, dims, batched = [], [], False
        for a in args:
            if isinstance(a, (list, tuple)):
                pairs = [_F._unwrap_batched(t, level) for t in a]
                plain.append([t for t, _ in pairs])
                dims.append([d for _, d in pairs])
                batched = batched or any(d is not None for _, d in pairs)
            elif isinstance(a, torch.Tensor):
                t, d = _F._unwrap_batched(a, level)
                plain.append(t)
                dims.append(d)
                batched = batched or d is not None
            else:
                plain.append(a)
                dims.append(None)
        with torch._C._ExcludeDispatchKeyGuard(_BELOW_BATCHED):
            if not batched:  # nothing batched at this level: the op itself, one level down
                return op(*plain)
            out, out_dims = rule(VmapInfo(interp.batch_size(), level), dims, *plain)
        if isinstance(out, (list, tuple)):
            wrapped = [o if d is None else _F._add_batch_dim(o, d, level) for o, d in zip(out, out_dims)]
            return wrapped if isinstance(out, list) else tuple(wrapped)
        return out if out_dims is None else _F._add_batch_dim(out, out_dims, level)
    return kernel


def _front(x, d, size):
    """x with its batch dimension d first, or x (unbatched, d None) expanded to the batch size."""
    return x if d == 0 else x.movedim(d, 0) if d is not None else x.expand(size, *x.shape)


def _randomness(info, name):
    """The randomness a noisy op follows at this level: "same" inside a backward at a vmap level
    its forward did not run under (csrc/autograd.cpp), else vmap's; "error" is refused."""
    return _C.noise_randomness(info.level, name)


def _elementwise(op, info, in_dims, tensors, rest, noisy, name):
    """op(*tensors, *rest) over a batch of same-shape tensors (a None tensor passes through);
    returns the per-element outputs, batched along dim 0."""
    size = info.batch_size
    xs = [None if t is None else _front(t, d, size) for t, d in zip(tensors, in_dims)]
    shape = next(x for x in xs if x is not None).shape[1:]
    if noisy and _randomness(info, name) == "same":
        outs = [op(*(None if x is None else x[b] for x in xs), *rest) for b in range(size)]
        return _stack(outs)
    n = shape.numel()
    # One call on (B, span) rows: row b's stream starts at offset + b * span, as the contract asks
    # (rows padded only where numel is not a multiple of 4).
    pad = span(n) - n
    rows = [None if x is None else torch.nn.functional.pad(x.reshape(size, n), (0, pad)) if pad else x.reshape(size, n)
            for x in xs]
    out = op(*rows, *rest)
    unpad = lambda y: (y[:, :n] if pad else y).reshape(size, *shape)  # noqa: E731
    return tuple(map(unpad, out)) if isinstance(out, tuple) else unpad(out)


def _stack(outs):
    return tuple(map(torch.stack, zip(*outs))) if isinstance(outs[0], tuple) else torch.stack(outs)


def _noisy(p, mode):
    return mode == 3 or (mode != 0 and p > 0)  # as dg::make_stream: "normal" ignores p


def register(ns, qualname_prefix):
    lib = _LIBS.setdefault(qualname_prefix, torch.library.Library(qualname_prefix, "IMPL"))

    def reg(name):
        def register_rule(rule):
            op = getattr(ns, name).default
            lib.impl(name, _batching_kernel(op, rule), "FuncTorchBatched", with_keyset=True)
        return register_rule

    @reg("philox4x32_10")
    def _(info, in_dims, counter, key):
        size = info.batch_size
        return ns.philox4x32_10(_front(counter, in_dims[0], size), _front(key, in_dims[1], size)), 0

    @reg("noise")
    def _(info, in_dims, like, p, mode, seed, offset, rng_state=None):
        out = _elementwise(ns.noise, info, in_dims[:1], [like], (p, mode, seed, offset, rng_state), _noisy(p, mode),
                           "noise")
        return out, 0

    @reg("drop_grad")
    def _(info, in_dims, grad, p, mode, seed, offset, rng_state=None):
        out = _elementwise(ns.drop_grad, info, in_dims[:1], [grad], (p, mode, seed, offset, rng_state),
                           _noisy(p, mode), "drop_grad")
        return out, 0

    def update_rule(info, in_dims, param, grad, lr_tensor, lr, p, mode, seed, offset, rng_state=None):
        out = _elementwise(ns.dropgrad_update.default, info, in_dims[:3], [param, grad, None],
                           (lr, p, mode, seed, offset, rng_state), _noisy(p, mode), "dropgrad_update")
        return out, 0

    update_float_lr = _batching_kernel(ns.dropgrad_update.default, update_rule)

    def update_kernel(keyset, param, grad, lr_tensor, lr, p, mode, seed, offset, rng_state=None):
        if lr_tensor is None:  # a float lr: one call on (B, span) rows, as the elementwise ops
            return update_float_lr(keyset, param, grad, lr_tensor, lr, p, mode, seed, offset, rng_state)
        # A tensor lr: dropgrad_step of one-tensor lists at this same level (its C++ batching
        # rule): its batched streams are exactly these, one launch serves any numel, and a
        # batched 0-d lr stays a per-element scalar.
        return ns.dropgrad_step.default([param], [grad], [lr_tensor], lr, p, mode, seed, offset, rng_state)[0]

    lib.impl("dropgrad_update", update_kernel, "FuncTorchBatched", with_keyset=True)

    @reg("meta_dropout")
    def _(info, in_dims, f, a, deterministic, seed, offset, rng_state=None):
        out = _elementwise(ns.meta_dropout, info, in_dims[:2], [f, a], (deterministic, seed, offset, rng_state),
                           not deterministic, "meta_dropout")
        return out, 0

    @reg("meta_dropout_backward")
    def _(info, in_dims, grad_out, f, a, deterministic, seed, offset, rng_state=None):
        out = _elementwise(ns.meta_dropout_backward, info, in_dims[:3], [grad_out, f, a],
                           (deterministic, seed, offset, rng_state), not deterministic, "meta_dropout_backward")
        return out, (0, 0)

    @reg("meta_dropout_double_backward")
    def _(info, in_dims, grad_grad_f, grad_grad_a, grad_out, f, a, deterministic, seed, offset, rng_state=None):
        out = _elementwise(ns.meta_dropout_double_backward, info, in_dims[:5], [grad_grad_f, grad_grad_a, grad_out, f, a],
                           (deterministic, seed, offset, rng_state), not deterministic, "meta_dropout_double_backward")
        return out, (0, 0, 0)

    if qualname_prefix == "dropgrad":
        @reg("cuda_rng_state")
        def _(info, in_dims, like, numel):
            # The whole batch's streams from one reservation; the state itself is not batched.
            return ns.cuda_rng_state(like.select(in_dims[0], 0) if in_dims[0] is not None else like,
                                     numel * info.batch_size + 4 * info.batch_size), None
