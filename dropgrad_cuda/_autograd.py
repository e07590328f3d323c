"""Autograd, fake (meta) implementations and batching rules of the ops, written once for any
namespace of kernels.

`register(ns)` takes a torch.ops namespace whose ops follow the schemas of csrc/ops.cpp
(torch.ops.dropgrad for the C++ CPU/CUDA kernels, torch.ops.dropgrad_triton for Triton) and
expresses every backward through that same namespace's ops, so backward regenerates the noise
from (seed, offset) instead of saving it, and each backward is itself differentiable.
"""
import types

import torch
import torch.nn.functional as F
from torch._functorch.utils import enable_single_level_autograd_function
from torch.autograd.function import _SingleLevelFunction

from . import _batching
from .reference import MODES, stream_offsets

NORMAL = MODES["normal"]
_LIBS = {}  # the IMPL libraries that hold the Autograd kernels, kept alive


def _reduce_like(g, like):
    return g.sum().reshape(like.shape).to(like.dtype) if g.shape != like.shape else g.to(like.dtype)


def _flatten(args):
    """Positional arguments with list arguments spread out, and the lengths to regroup them."""
    flat, spec = [], []
    for a in args:
        if isinstance(a, (list, tuple)):
            flat.extend(a)
            spec.append(len(a))
        else:
            flat.append(a)
            spec.append(None)
    return flat, spec


def _regroup(flat, spec):
    out, i = [], 0
    for n in spec:
        out.append(flat[i] if n is None else list(flat[i:i + n]))
        i += 1 if n is None else n
    return out


def refuse_grad(params):
    """dropgrad_step_ in a graph that would need its (absent) derivative."""
    if torch.is_grad_enabled() and any(isinstance(w, torch.Tensor) and w.requires_grad for w in params):
        raise RuntimeError("dropgrad_step_ updates params in place and is not differentiable: call it under "
                           "torch.no_grad() (as an optimizer step does), or use dropgrad_step for new tensors")


def register_autograd(op, backward, setup_context):
    """torch.library.register_autograd(op, backward, setup_context=...) with the graph node a
    _SingleLevelFunction: torch.func's grad, vjp and jacrev accept that one, whereas the
    autograd.Function that torch <= 2.14 generates has no setup_context staticmethod and is
    refused under every transform (pytorch/pytorch#170834; PyTorch's own fix takes this route).
    List arguments and outputs are spread into the node's inputs and outputs."""

    class Base(_SingleLevelFunction):
        @staticmethod
        def forward(ctx, keyset, spec, *flat):
            args = _regroup(flat, spec)
            # apply() runs forward with grad mode off; under torch.func the outer grad levels are
            # dispatched from here and must record (this node is only built with grad mode on).
            with (torch.enable_grad() if torch._C._are_functorch_transforms_active()
                  else torch._C._AutoDispatchBelowAutograd()):
                out = op.redispatch(keyset & torch._C._after_autograd_keyset, *args)
            setup_context(ctx, args, out)
            ctx.spec, ctx.list_out, ctx.vmap_levels = spec, isinstance(out, list), _batching.vmap_levels()
            return tuple(out) if ctx.list_out else out

        @staticmethod
        def backward(ctx, *gouts):
            before = ctx.needs_input_grad  # restored: a retained graph runs this backward again
            ctx.needs_input_grad = tuple(any(n) if isinstance(n, list) else n
                                         for n in _regroup(before[2:], ctx.spec))
            try:
                with _batching.regenerating(ctx.vmap_levels):
                    grads = backward(ctx, list(gouts)) if ctx.list_out else backward(ctx, *gouts)
            finally:
                ctx.needs_input_grad = before
            flat = []
            for g, n in zip(grads, ctx.spec):
                flat.extend([g] if n is None else (g if g else [None] * n))
            return (None, None, *flat)

    # Named after the op, so profiles and graphs tell the ops apart: meta_dropout_backward's node
    # is MetaDropoutBackwardFnBackward (Fn: apply() records an event under the class name, which
    # must not read as meta_dropout's MetaDropoutBackward).
    Node = types.new_class("".join(w.capitalize() for w in op._schema.name.split("::")[1].split("_")) + "Fn", (Base,))
    list_out = str(op._schema.returns[0].type) == "List[Tensor]"
    defaults = [a.default_value for a in op._schema.arguments]

    def kernel(keyset, *args):
        if torch.is_grad_enabled() and torch._C._any_requires_grad(*args):
            # The dispatcher drops trailing arguments equal to their defaults; setup_context wants all.
            flat, spec = _flatten((*args, *defaults[len(args):]))
            with enable_single_level_autograd_function():
                out = Node.apply(keyset, spec, *flat)
            return list(out) if list_out else out
        with torch._C._AutoDispatchBelowAutograd():
            return op.redispatch(keyset & torch._C._after_autograd_keyset, *args)

    ns, name = op._schema.name.split("::")
    lib = _LIBS.setdefault(ns, torch.library.Library(ns, "IMPL"))
    lib.impl(name, kernel, "Autograd", with_keyset=True)


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
        return torch.empty(like.shape, dtype=torch.float32, device=like.device)

    @torch.library.register_fake(q("drop_grad"))
    def _(grad, p, mode, seed, offset, rng_state=None):
        return torch.empty_like(grad, memory_format=torch.contiguous_format)

    @torch.library.register_fake(q("dropgrad_update"))
    def _(param, grad, lr_tensor, lr, p, mode, seed, offset, rng_state=None):
        return torch.empty_like(param, memory_format=torch.contiguous_format)

    @torch.library.register_fake(q("dropgrad_step"))
    def _(params, grads, lrs, lr, p, mode, seed, offset, rng_state=None):
        # A meta tensor among CPU ones dispatches here, not to a kernel: refuse, as the kernels do.
        if any(t.device != params[0].device for t in (*params, *grads)):
            raise RuntimeError("params and grads must all be on one device")
        return [torch.empty_like(w, memory_format=torch.contiguous_format) for w in params]

    @torch.library.register_fake(q("dropgrad_step_"))
    def _(params, grads, lrs, lr, weight_decay, p, noise_mode, seed, offset, rng_state=None):
        if any(t.device != params[0].device for t in (*params, *grads)):
            raise RuntimeError("params and grads must all be on one device")

    @torch.library.register_fake(q("meta_dropout"))
    def _(f, a, deterministic, seed, offset, rng_state=None):
        return torch.empty_like(f, memory_format=torch.contiguous_format)

    @torch.library.register_fake(q("meta_dropout_backward"))
    def _(grad_out, f, a, deterministic, seed, offset, rng_state=None):
        return (torch.empty_like(f, memory_format=torch.contiguous_format),
                torch.empty_like(f, memory_format=torch.contiguous_format))

    @torch.library.register_fake(q("meta_dropout_double_backward"))
    def _(grad_grad_f, grad_grad_a, grad_out, f, a, deterministic, seed, offset, rng_state=None):
        return tuple(torch.empty_like(f, memory_format=torch.contiguous_format) for _ in range(3))

    # ---- drop_grad: linear in grad, so its backward is itself with the same stream ----
    def drop_grad_setup(ctx, inputs, output):
        _, ctx.p, ctx.mode, ctx.seed, ctx.offset, rng_state = inputs
        ctx.save_for_backward(rng_state)

    def drop_grad_backward(ctx, gout):
        (rng_state,) = ctx.saved_tensors
        return ns.drop_grad(gout, ctx.p, ctx.mode, ctx.seed, ctx.offset, rng_state), None, None, None, None, None

    register_autograd(ns.drop_grad.default, drop_grad_backward, drop_grad_setup)

    # ---- dropgrad_update: d/dparam = 1, d/dgrad = -lr * n, d/dlr = -(grad * n) ----
    def update_grads(gout, grad, lr_tensor, lr, p, mode, seed, offset, rng_state, needs):
        l = lr_tensor if lr_tensor is not None else lr
        d_param = gout if needs[0] else None
        d_grad = ns.drop_grad(gout, p, mode, seed, offset, rng_state) * -l if needs[1] else None
        d_lr = None
        if lr_tensor is not None and needs[2]:
            d_lr = _reduce_like(-(ns.drop_grad(grad, p, mode, seed, offset, rng_state) * gout), lr_tensor)
        return d_param, d_grad, d_lr

    def update_setup(ctx, inputs, output):
        _, grad, lr_tensor, ctx.lr, ctx.p, ctx.mode, ctx.seed, ctx.offset, rng_state = inputs
        # Only inputs are saved (grad only when the lr gradient needs it), never the noise.
        lr_needs = lr_tensor is not None and lr_tensor.requires_grad
        ctx.save_for_backward(grad if lr_needs else None, lr_tensor, rng_state)

    def update_backward(ctx, gout):
        grad, lr_tensor, rng_state = ctx.saved_tensors
        d = update_grads(gout, grad, lr_tensor, ctx.lr, ctx.p, ctx.mode, ctx.seed, ctx.offset, rng_state,
                         ctx.needs_input_grad)
        return (*d, None, None, None, None, None, None)

    register_autograd(ns.dropgrad_update.default, update_backward, update_setup)

    # ---- dropgrad_step: the same per tensor, each on its slice of the stream ----
    def step_setup(ctx, inputs, output):
        params, grads, lrs, ctx.lr, ctx.p, ctx.mode, ctx.seed, ctx.offset, rng_state = inputs
        ctx.numels = [w.numel() for w in params]
        ctx.n = len(params)
        ctx.has_lrs = len(lrs) > 0
        lr_needs = ctx.has_lrs and any(l.requires_grad for l in lrs)
        ctx.save_for_backward(rng_state, *(grads if lr_needs else [None] * ctx.n), *lrs)

    def step_backward(ctx, gouts):
        rng_state, *saved = ctx.saved_tensors
        grads, lrs = saved[: ctx.n], (saved[ctx.n:] if ctx.has_lrs else [None] * ctx.n)
        need_p, need_g, need_l = ctx.needs_input_grad[:3]
        d_params, d_grads, d_lrs = [], [], []
        for k, o in enumerate(stream_offsets(ctx.numels, ctx.offset)):
            if gouts[k] is None:  # this output took no part in the loss
                d = (None, None, None)
            else:
                d = update_grads(gouts[k], grads[k], lrs[k], ctx.lr, ctx.p, ctx.mode, ctx.seed, o, rng_state,
                                 (need_p, need_g, need_l and lrs[k] is not None and lrs[k].requires_grad))
            d_params.append(d[0])
            d_grads.append(d[1])
            d_lrs.append(d[2])
        # The gradient of a list input is a list of its length (possibly of Nones).
        return d_params, d_grads, d_lrs if ctx.has_lrs else [], None, None, None, None, None, None

    register_autograd(ns.dropgrad_step.default, step_backward, step_setup)

    # ---- dropgrad_step_: in place and not differentiable. The dispatcher does not bump the version
    # counter of a custom op's mutated arguments (autograd must see a saved param go stale), nor
    # refuse a param that requires grad, so both are done here. ----
    def step_inplace_autograd(keyset, params, *args):
        refuse_grad(params)
        with torch._C._AutoDispatchBelowAutograd():
            return ns.dropgrad_step_.default.redispatch(keyset & torch._C._after_autograd_keyset, params, *args)

    def step_inplace_version(keyset, params, *args):
        ns.dropgrad_step_.default.redispatch(keyset & torch._C._after_ADInplaceOrView_keyset, params, *args)
        torch.autograd.graph.increment_version(params)

    lib = _LIBS.setdefault(qualname_prefix, torch.library.Library(qualname_prefix, "IMPL"))
    lib.impl("dropgrad_step_", step_inplace_autograd, "Autograd", with_keyset=True)
    lib.impl("dropgrad_step_", step_inplace_version, "ADInplaceOrView", with_keyset=True)

    # ---- meta_dropout: a fused backward op that regenerates eps; saves only f and a ----
    def md_setup(ctx, inputs, output):
        f, a, ctx.det, ctx.seed, ctx.offset, rng_state = inputs
        ctx.save_for_backward(f, a, rng_state)

    def md_backward(ctx, gout):
        f, a, rng_state = ctx.saved_tensors
        gf, ga = ns.meta_dropout_backward(gout, f, a, ctx.det, ctx.seed, ctx.offset, rng_state)
        return gf, ga, None, None, None, None

    register_autograd(ns.meta_dropout.default, md_backward, md_setup)

    # The backward's own derivative, for second-order MAML: one fused op that regenerates eps.
    def mdb_setup(ctx, inputs, output):
        gout, f, a, ctx.det, ctx.seed, ctx.offset, rng_state = inputs
        ctx.save_for_backward(gout, f, a, rng_state)

    def mdb_backward(ctx, ggf, gga):
        gout, f, a, rng_state = ctx.saved_tensors
        zero = lambda g: torch.zeros_like(f) if g is None else g  # noqa: E731  (an output not in the loss)
        d = ns.meta_dropout_double_backward(zero(ggf), zero(gga), gout, f, a, ctx.det, ctx.seed, ctx.offset, rng_state)
        return (*d, None, None, None, None)

    register_autograd(ns.meta_dropout_backward.default, mdb_backward, mdb_setup)

    # The third order, rarely needed: composite ops on z = a + eps (eps regenerated, materialized
    # only here), so every further order is PyTorch's autograd. With s = softplus'(z) and its
    # derivatives ds, dds, the double backward is D_gout = ggf sp + gga f s, D_f = gga gout s,
    # D_a = ggf gout s + gga gout f ds; (u, v, w) are the cotangents of (D_gout, D_f, D_a).
    def mddb_setup(ctx, inputs, output):
        ggf, gga, gout, f, a, ctx.det, ctx.seed, ctx.offset, rng_state = inputs
        ctx.save_for_backward(ggf, gga, gout, f, a, rng_state)

    def mddb_backward(ctx, u, v, w):
        ggf, gga, gout, f, a, rng_state = ctx.saved_tensors
        z = a if ctx.det else a + ns.noise(a.detach(), 0.0, NORMAL, ctx.seed, ctx.offset, rng_state).to(a.dtype)
        # softplus' as PyTorch's (threshold 20); its derivatives ds = e / (1 + e)^2, e = exp(-|z|), and
        # dds = ds (1 - 2 s) = -ds tanh(z / 2): forms that do not cancel where s rounds to 1 (as
        # dropgrad_math.h and reference.py write them).
        e = torch.exp(-z.abs())
        s = torch.where(z > 20, torch.ones_like(z), torch.sigmoid(z))
        ds = torch.where(z > 20, torch.zeros_like(z), e / ((1 + e) * (1 + e)))
        dds = torch.where(z > 20, torch.zeros_like(z), -ds * torch.tanh(z / 2))
        u, v, w = (torch.zeros_like(f) if t is None else t for t in (u, v, w))
        return (u * F.softplus(z) + w * gout * s,
                u * f * s + v * gout * s + w * gout * f * ds,
                v * gga * s + w * (ggf * s + gga * f * ds),
                u * gga * s + w * gga * gout * ds,
                u * (ggf * s + gga * f * ds) + v * gga * gout * ds + w * (ggf * gout * ds + gga * gout * f * dds),
                None, None, None, None)

    register_autograd(ns.meta_dropout_double_backward.default, mddb_backward, mddb_setup)
    _batching.register(ns, qualname_prefix)
