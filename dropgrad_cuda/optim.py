"""DropGradSGD: torch.optim.SGD with DropGrad noise on the direction it descends along. Needs
nothing beyond torch; dropgrad_cuda.integrations.higher registers its differentiable twin."""
import torch
import torch.distributed as dist
from torch.optim.optimizer import _use_grad_for_differentiable
from torch.optim.sgd import sgd

from . import ops
from .reference import span, stream_offsets

# The noise options a param group carries beside SGD's own, with their defaults. The seed is the
# optimizer's, not a group's: one stream serves every group (NoiseStream).
NOISE_DEFAULTS = dict(p=0.1, mode="gaussian", training=True, backend="auto")


def noisy(group, training=True):
    return training and group["training"] and ops._noisy(group["p"], group["mode"])


def descent(group, params, grads):
    """The gradient SGD descends along before the noise: -g when maximizing, plus weight decay."""
    wd, sign = group["weight_decay"], -1 if group["maximize"] else 1
    return [None if g is None else (sign * g if sign < 0 else g) + (wd * w if wd else 0) for w, g in zip(params, grads)]


class NoiseStream:
    """One Philox stream, (seed, offset), that successive steps read on from, as torch's CUDA
    generator does: every step gets fresh noise, one seed gives one run, and a checkpoint of
    (seed, offset) resumes the very stream. seed=None draws the seed at the first noisy step from
    torch's default generator (so torch.manual_seed before training, or a restored RNG state,
    reproduces it); under torch.distributed every rank draws, then takes rank 0's (one broadcast,
    once), so replicated parameters get identical noise on every rank."""

    def __init__(self, seed=None):
        self.seed = None if seed is None else ops._seed(seed) % 2 ** 64  # checks it
        self.offset = 0

    def take(self, length, device):
        """(seed, offset) of the next `length` words (a multiple of 4), and moves past them."""
        if self.seed is None:
            seed = ops._seed(None) % 2 ** 64
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                t = torch.tensor([seed - (seed >> 63 << 64)], dtype=torch.int64, device=device)
                dist.broadcast(t, src=0)
                seed = int(t) % 2 ** 64
            self.seed = seed
        out = self.seed, self.offset
        self.offset += length
        return out

    def state_dict(self):
        return dict(seed=self.seed, offset=self.offset)

    def load_state_dict(self, state):
        self.seed, self.offset = state["seed"], state["offset"]


def _refuse_duplicates(params):
    seen = {}
    for i, w in enumerate(params):
        w = w[1] if isinstance(w, tuple) else w  # (name, tensor), as torch.optim takes named parameters
        if id(w) in seen:
            raise ValueError(f"DropGradSGD: params[{i}] is params[{seen[id(w)]}], a parameter listed twice "
                             "(it would be stepped twice)")
        seen[id(w)] = i


class DropGradSGD(torch.optim.SGD):
    """torch.optim.SGD with DropGrad noise on the gradient it descends along:
    d = (±g + weight_decay * w) * n, n the DropGrad noise of rate p; then SGD's own momentum,
    dampening and nesterov on d. Without momentum the whole step is one fused in-place pass per
    group (dropgrad_step_), weight decay included.

    SGD's signature, positional order and defaults, and every keyword the installed torch's SGD
    takes (foreach, fused, differentiable, ...); the noise options are keyword-only. With the noise
    off (p=0, mode "none", training=False on a group) every step is torch.optim.SGD's own, bit for
    bit, sparse gradients included. With it on: sparse gradients, differentiable=True and a
    GradScaler's fused unscaling are refused with an error (the noise is dense, its step in place).

    Noise: one stream (NoiseStream) read on step after step, group after group: fresh noise at
    every step; an int seed reproduces a run; seed=None agrees on a seed across torch.distributed
    ranks once, so DDP replicas stay identical; state_dict() carries the stream, so a resumed run
    continues it. A parameter listed twice is refused when it is added. It deep-copies, pickles
    and saves like torch.optim.SGD."""

    _noise = None  # the constructor's noise options while SGD's constructor adds the first groups

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, *, p=0.1,
                 mode="gaussian", seed=None, training=True, backend="auto", **sgd_options):
        self._noise = dict(p=p, mode=mode, training=training, backend=backend)
        self.noise_stream = NoiseStream(seed)
        # sgd_options: SGD's keyword-only options of the installed torch; SGD refuses unknown ones.
        super().__init__(params, lr, momentum, dampening, weight_decay, nesterov, **sgd_options)
        self.defaults.update(self._noise)
        del self._noise  # from here on self.defaults holds them, and is what copies and pickles carry

    def _noise_defaults(self):
        return self._noise or {k: self.defaults.get(k, v) for k, v in NOISE_DEFAULTS.items()}

    def add_param_group(self, param_group):
        for k, v in self._noise_defaults().items():
            param_group.setdefault(k, v)
        ops._check_p(param_group["p"]), ops._check_mode(param_group["mode"])  # fail here, not at a step
        params = param_group["params"]
        if not isinstance(params, (torch.Tensor, set)):  # torch.optim refuses a set itself
            param_group["params"] = params = list(params)
            _refuse_duplicates(params)
        super().add_param_group(param_group)
        self._check_noisy(self.param_groups[-1])

    def _check_noisy(self, group):
        if not noisy(group):
            return
        if group.get("differentiable"):
            raise ValueError("DropGradSGD: differentiable=True needs the noise off (p=0, mode='none' or "
                             "training=False): the noisy step is in place; for a differentiable inner loop use "
                             "dropgrad_cuda.integrations.higher or dropgrad_cuda.dropgrad_step")
        if getattr(self, "grad_scale", None) is not None or getattr(self, "found_inf", None) is not None:
            raise RuntimeError("DropGradSGD: a GradScaler's fused unscaling (fused=True under AMP) needs the noise "
                               "off; call scaler.unscale_(optimizer) first or use fused=False")

    def __getstate__(self):  # copies and pickles carry the stream
        return {**super().__getstate__(), "noise_stream": self.noise_stream}

    def __setstate__(self, state):  # load_state_dict of a plain SGD's state gets the noise defaults
        super().__setstate__(state)
        for g in self.param_groups:
            for k, v in self._noise_defaults().items():
                g.setdefault(k, v)

    def state_dict(self):
        return {**super().state_dict(), "noise_stream": self.noise_stream.state_dict()}

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        stream = state_dict.pop("noise_stream", None)  # a plain SGD's state leaves the stream as it is
        super().load_state_dict(state_dict)
        if stream is not None:
            self.noise_stream.load_state_dict(stream)

    @_use_grad_for_differentiable
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, bufs = [], [], []
            sparse = self._init_group(group, params, grads, bufs)
            if noisy(group) and params:
                self._check_noisy(group)
                if sparse:
                    raise RuntimeError("DropGradSGD: sparse gradients need the noise off (p=0, mode='none' or "
                                       "training=False): the noise is dense")
                offsets = stream_offsets([w.numel() for w in params])
                seed, base = self.noise_stream.take(offsets[-1] + span(params[-1].numel()), params[0].device)
                if group["momentum"] == 0:  # one fused in-place pass: w -= lr * ((±g + wd * w) * n)
                    ops.dropgrad_step_(params, torch._foreach_neg(grads) if group["maximize"] else grads, group["lr"],
                                       group["p"], group["mode"], weight_decay=group["weight_decay"], seed=seed,
                                       offset=base, backend=group["backend"])
                    continue
                grads = [ops.drop_grad(d, group["p"], group["mode"], seed=seed, offset=base + o,
                                       backend=group["backend"]) for d, o in zip(descent(group, params, grads), offsets)]
                opts = dict(weight_decay=0.0, maximize=False)  # already in d
            else:
                opts = dict(weight_decay=group["weight_decay"], maximize=group["maximize"])
            # torch.optim.SGD.step's own call, as the installed torch makes it.
            sgd(params, grads, bufs, momentum=group["momentum"], lr=group["lr"], dampening=group["dampening"],
                nesterov=group["nesterov"], has_sparse_grad=sparse, foreach=group["foreach"], fused=group["fused"],
                grad_scale=getattr(self, "grad_scale", None), found_inf=getattr(self, "found_inf", None), **opts)
            if group["momentum"] != 0:
                for w, buf in zip(params, bufs):
                    self.state[w]["momentum_buffer"] = buf
        return loss
