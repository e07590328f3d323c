"""A DropGrad SGD for ``higher``: ``DropGradSGD`` is a torch optimizer (usable on its own) whose
differentiable twin is registered with ``higher.register_optim`` on import, so
``higher.innerloop_ctx(model, DropGradSGD(model.parameters(), lr, p=0.1))`` runs fused noisy updates.
Needs ``higher`` (pip install higher); nothing else in dropgrad_cuda imports it."""
import higher
import torch

from .. import ops
from . import _common


def _group_step(group, params, grads):
    wd = group["weight_decay"]
    if wd:
        grads = [None if g is None else g + wd * w for w, g in zip(params, grads)]
    return _common.step(params, grads, group["lr"], group["p"], group["mode"], seed=group["seed"],
                        training=group["training"], backend=group["backend"])


class DropGradSGD(torch.optim.SGD):
    """SGD whose step is w <- w - lr * ((g + weight_decay * w) * n), n the DropGrad noise of rate p.

    seed=None draws fresh noise every step (torch.manual_seed reproduces a run); an int gives the
    same noise every step, for tests. `training=False` on a group turns the noise off."""

    def __init__(self, params, lr, p=0.1, mode="gaussian", *, weight_decay=0.0, seed=None, training=True,
                 backend="auto"):
        ops._check_p(p), ops._check_mode(mode)  # a bad rate or mode fails here, not at the first step
        super().__init__(params, lr=lr, weight_decay=weight_decay)
        extra = dict(p=p, mode=mode, seed=seed, training=training, backend=backend)
        self.defaults.update(extra)  # for groups added later by add_param_group
        for g in self.param_groups:
            for k, v in extra.items():
                g.setdefault(k, v)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = group["params"]
            new = _group_step(group, params, [w.grad for w in params])
            for w, n in zip(params, new):
                if n is not w:
                    w.copy_(n)
        return loss


class DifferentiableDropGradSGD(higher.optim.DifferentiableOptimizer):
    """DropGradSGD as higher's differentiable optimizer: each step is one fused, differentiable update
    (second order through the noise, which is regenerated in backward)."""

    def _update(self, grouped_grads, **kwargs):
        for group, grads in zip(self.param_groups, grouped_grads):
            group["params"][:] = _group_step(group, group["params"], grads)


higher.register_optim(DropGradSGD, DifferentiableDropGradSGD)
