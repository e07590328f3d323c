"""For ``torch.func.functional_call`` inner loops: parameters and gradients as dicts of tensors,
and a meta-batch adapted in the torch.func style (vmap over tasks, grad inside)."""
import torch
from torch.func import grad, vmap

from .. import reference
from . import _common


def _lr_of(lr, name, step):
    if not isinstance(lr, dict):
        return lr
    if name not in lr:
        raise KeyError(f"lr has no entry for parameter {name!r}")
    l = lr[name]
    if step is None:
        return l
    try:
        return l[step]
    except (IndexError, TypeError) as e:
        raise ValueError(f"lr[{name!r}] must be indexable by step={step} (one step size per inner step)") from e


def inner_step(params, grads, lr, p, mode="gaussian", *, step=None, seed=None, offset=0, first_order=False,
               training=True, backend="auto"):
    """One DropGrad inner update of a dict of parameters; returns a new dict (same keys and order).

    lr: a float (MAML); a dict of tensors by name, each 0-d or of the parameter's shape (Meta-SGD);
    or, with `step`, a dict of per-step step sizes indexed by `step` (MAML++ LSLR: lr[name][step]).
    grads: a dict by name (a missing name or None leaves that parameter unchanged), or a sequence
    in params' order, as torch.autograd.grad returns it. Noise only when `training`.
    """
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of tensors, got {type(params).__name__}")
    names = list(params)
    if isinstance(grads, dict):
        unknown = set(grads) - set(params)
        if unknown:
            raise ValueError(f"grads has names that are not in params: {sorted(unknown)}")
        gs = [grads.get(n) for n in names]
    else:
        gs = list(grads)
    if isinstance(lr, dict) or step is not None:
        if not isinstance(lr, dict):
            raise TypeError("step is only meaningful with a dict lr of per-step step sizes")
        lr = [_lr_of(lr, n, step) for n in names]
    new = _common.step(params.values(), gs, lr, p, mode, seed=seed, offset=offset, first_order=first_order,
                       training=training, backend=backend)
    return dict(zip(names, new))


def grads_of(loss, params, *, first_order=False):
    """torch.autograd.grad of `loss` for a dict of params, as a dict; second order unless first_order."""
    gs = torch.autograd.grad(loss, list(params.values()), create_graph=not first_order, allow_unused=True)
    return dict(zip(params, gs))


def meta_batch_loss(loss_fn, params, xs, ys, xq, yq, *, lr, p, mode="gaussian", steps=1, seed=None, first_order=False,
                    training=True, query_loss_fn=None, backend="auto"):
    """The mean query loss of a meta-batch, each task adapted by `steps` DropGrad inner updates:
    vmap over the tasks (stacked along dim 0 of xs, ys, xq, yq) with randomness="different", the
    inner gradient by torch.func.grad, second order unless first_order. loss_fn(params, x, y) is
    the functional loss (e.g. through functional_call); query_loss_fn, if given, the query's (e.g.
    inside dropgrad_cuda.nn.query_pass). Every step is one fused update over the
    whole meta-batch; task b's noise at step s is the stream at offset (s * B + b) * span, span the
    parameters' stream length, so it equals a loop over tasks with those offsets (and with
    seed=None a fresh seed per step, task b at offset b * span)."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    tasks = xs.shape[0]
    span = sum(reference.span(w.numel()) for w in params.values())

    def adapted_query_loss(xs, ys, xq, yq):
        fast = params
        for s in range(steps):
            g = grad(loss_fn)(fast, xs, ys)
            fast = inner_step(fast, g, lr, p, mode, seed=seed, offset=0 if seed is None else s * tasks * span,
                              first_order=first_order, training=training, backend=backend)
        return (query_loss_fn or loss_fn)(fast, xq, yq)

    return vmap(adapted_query_loss, randomness="different")(xs, ys, xq, yq).mean()
