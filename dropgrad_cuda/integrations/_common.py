"""The one fused update every integration makes: a list of tensors, some with no gradient."""
import torch

from .. import ops


def step(params, grads, lr, p, mode, *, seed=None, offset=0, first_order=False, training=True, backend="auto"):
    """New tensors for `params`: one dropgrad_step over those whose grad is not None (the others are
    returned unchanged, like the libraries' `if g is None: continue`).

    lr: a float, or a list with one float or tensor per param. first_order detaches the gradients.
    """
    params, grads = list(params), list(grads)
    if len(params) != len(grads):
        raise ValueError(f"grads must have one entry per parameter ({len(params)}), got {len(grads)}")
    lrs = list(lr) if isinstance(lr, (list, tuple)) else None
    if lrs is not None and len(lrs) != len(params):
        raise ValueError(f"lr must have one entry per parameter ({len(params)}), got {len(lrs)}")
    live = [i for i, g in enumerate(grads) if g is not None]
    out = list(params)
    if not live:
        return out
    gs = [grads[i].detach() if first_order else grads[i] for i in live]
    if lrs is not None:
        # Per-param floats become float64 0-d tensors (exact) so one call takes them all.
        lr = [lrs[i] if isinstance(lrs[i], torch.Tensor)
              else torch.tensor(lrs[i], dtype=torch.float64, device=params[i].device) for i in live]
    if not training:  # the published DropGrad code only perturbs gradients while training
        p, mode = 0.0, "none"
    new = ops.dropgrad_step([params[i] for i in live], gs, lr, p, mode, seed=seed, offset=offset, backend=backend)
    for i, w in zip(live, new):
        out[i] = w
    return out
