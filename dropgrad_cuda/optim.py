"""DropGradSGD: torch.optim.SGD with DropGrad noise on the direction it descends along. Needs
nothing beyond torch; dropgrad_cuda.integrations.higher registers its differentiable twin."""
import torch
from torch.optim.sgd import sgd

from . import ops
from .reference import stream_offsets

# The noise options a param group carries beside SGD's own, with their defaults.
NOISE_DEFAULTS = dict(p=0.1, mode="gaussian", seed=None, training=True, backend="auto")


def noisy(group, training=True):
    return training and group["training"] and ops._noisy(group["p"], group["mode"])


def descent(group, params, grads):
    """The gradient SGD descends along before the noise: -g when maximizing, plus weight decay."""
    wd, sign = group["weight_decay"], -1 if group["maximize"] else 1
    return [None if g is None else (sign * g if sign < 0 else g) + (wd * w if wd else 0) for w, g in zip(params, grads)]


class DropGradSGD(torch.optim.SGD):
    """torch.optim.SGD with DropGrad noise on the gradient it descends along:
    d = (±g + weight_decay * w) * n, n the DropGrad noise of rate p; then SGD's own momentum,
    dampening and nesterov on d. Without momentum the whole step is one fused in-place pass per
    group (dropgrad_step_), weight decay included.
    With the noise off (p=0, mode "none", training=False) the step is torch.optim.SGD's, bit for bit.

    seed=None draws fresh noise every step (torch.manual_seed reproduces a run); an int gives the
    same noise every step, for tests. `training=False` on a group turns the noise off. A parameter
    listed twice is refused at the step (dropgrad_step_ refuses overlapping params).
    It deep-copies, pickles and saves like torch.optim.SGD."""

    _noise = None  # the constructor's noise options while SGD's constructor adds the first groups

    def __init__(self, params, lr, p=0.1, mode="gaussian", *, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, maximize=False, seed=None, training=True, backend="auto"):
        self._noise = dict(p=p, mode=mode, seed=seed, training=training, backend=backend)
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                         nesterov=nesterov, maximize=maximize)
        self.defaults.update(self._noise)
        del self._noise  # from here on self.defaults holds them, and is what copies and pickles carry

    def _noise_defaults(self):
        return self._noise or {k: self.defaults.get(k, v) for k, v in NOISE_DEFAULTS.items()}

    def add_param_group(self, param_group):
        for k, v in self._noise_defaults().items():
            param_group.setdefault(k, v)
        ops._check_p(param_group["p"]), ops._check_mode(param_group["mode"])  # fail here, not at a step
        super().add_param_group(param_group)

    def __setstate__(self, state):  # load_state_dict of a plain SGD's state gets the noise defaults
        super().__setstate__(state)
        for g in self.param_groups:
            for k, v in self._noise_defaults().items():
                g.setdefault(k, v)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, bufs = [], [], []
            if self._init_group(group, params, grads, bufs):
                raise RuntimeError("DropGradSGD: sparse gradients are not supported (the noise is dense)")
            if not params:
                continue
            opts = dict(weight_decay=group["weight_decay"], maximize=group["maximize"])
            if noisy(group):
                if group["momentum"] == 0:  # one fused in-place pass: w -= lr * ((±g + wd * w) * n)
                    ops.dropgrad_step_(params, torch._foreach_neg(grads) if group["maximize"] else grads, group["lr"],
                                       group["p"], group["mode"], weight_decay=group["weight_decay"],
                                       seed=group["seed"], backend=group["backend"])
                    continue
                # One seed for the whole group, each tensor on its own slice of the stream (as dropgrad_step_).
                seed = ops._seed(None) if group["seed"] is None else group["seed"]
                grads = [ops.drop_grad(d, group["p"], group["mode"], seed=seed, offset=o, backend=group["backend"])
                         for d, o in zip(descent(group, params, grads), stream_offsets([w.numel() for w in params]))]
                opts = dict(weight_decay=0.0, maximize=False)  # already in d
            sgd(params, grads, bufs, momentum=group["momentum"], lr=group["lr"], dampening=group["dampening"],
                nesterov=group["nesterov"], has_sparse_grad=False, foreach=group["foreach"], fused=group["fused"],
                **opts)
            if group["momentum"] != 0:
                for w, buf in zip(params, bufs):
                    self.state[w]["momentum_buffer"] = buf
        return loss
