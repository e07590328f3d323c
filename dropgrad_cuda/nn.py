"""Modules for the regularizers: Meta-Dropout blocks and logit noise, the CML co-learner, and the
helpers an inner loop needs (which parameters adapt, query-pass switch, Monte Carlo inner loss).

MetaDropout and LogitNoise sample noise in training mode only, like nn.Dropout: evaluation mode
(inference, export) and `query_pass(model)` (meta-training's query passes) make them
deterministic; the published meta-test samples the support set too, so adapt in training mode
there (as the example does) and use query_pass for the queries.
"""
import contextlib
import copy
import functools
from collections import OrderedDict

import torch
from torch import nn
from torch.nn.utils import parametrize

from . import ops


class _Switch:
    """The query-pass flag, held by reference: copies that share a module's attributes (higher's
    fmodel, learn2learn's clone) see query_pass on the module the user holds."""

    def __init__(self):
        self.deterministic = False


class _Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self._switch = _Switch()

    @property
    def deterministic(self):
        return self._switch.deterministic

    @deterministic.setter
    def deterministic(self, value):
        self._switch.deterministic = value

    def _sampling(self):
        return self.training and not self.deterministic


class _OuterOnly(nn.Module):
    """A module whose parameters are learned in the outer loop only (never adapted by the inner loop)."""


class MetaDropout(_Noisy):
    """h = layer(x) * softplus(generator(x) + eps), eps ~ N(0, I): the block of the published
    meta-dropout code, `layer` (theta) adapted in the inner loop, `generator` (phi) a copy of its
    shape fed by the same input and learned in the outer loop only. Sampled in training mode
    outside query_pass; layer(x) * softplus(generator(x)) otherwise."""

    def __init__(self, layer, generator=None):
        super().__init__()
        self.layer = layer
        self.generator = _Generator(generator if generator is not None else _fresh_copy(layer))

    def forward(self, x, *, seed=None):
        return ops.meta_dropout(self.layer(x), self.generator(x), deterministic=not self._sampling(), seed=seed)


class _Generator(_OuterOnly):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)


def _fresh_copy(layer):
    """The layer's structure with freshly initialized weights. Weight and spectral norm compute
    `weight` from other tensors, which reset_parameters does not touch: those are derived anew
    from a freshly initialized plain weight."""
    if any(type(h).__name__ == "WeightNorm" for m in layer.modules() for h in m._forward_pre_hooks.values()):
        raise TypeError("MetaDropout cannot copy a layer with the deprecated torch.nn.utils.weight_norm hook (torch "
                        "cannot deepcopy it): use torch.nn.utils.parametrizations.weight_norm, or pass generator=")
    g = copy.deepcopy(layer)
    for m in list(g.modules()):
        if not hasattr(m, "reset_parameters"):
            continue
        hooks = [h for h in m._forward_pre_hooks.values() if type(h).__name__ == "SpectralNorm"]  # the hook form
        for h in hooks:
            nn.utils.remove_spectral_norm(m, h.name)
        if parametrize.is_parametrized(m):
            # The copy shares its Parametrized* class with the layer, so it is left in place: a plain
            # weight is reset on the instance as the base class, then assigned through right_inverse.
            cls, names = type(m), list(m.parametrizations)
            shapes = {n: getattr(m, n) for n in names}
            m.__class__ = cls.__bases__[0]
            for n in names:
                m.register_parameter(n, nn.Parameter(torch.empty_like(shapes[n])))
            m.reset_parameters()
            fresh = {n: m._parameters.pop(n).detach() for n in names}
            m.__class__ = cls
            with torch.no_grad():
                for n, v in fresh.items():
                    setattr(m, n, v)
        else:
            m.reset_parameters()
        for h in hooks:
            nn.utils.spectral_norm(m, h.name, n_power_iterations=h.n_power_iterations, eps=h.eps, dim=h.dim)
    return g


class LogitNoise(_Noisy):
    """logits = mu + softplus(s) * eps with s = generator(x) one scalar per example (a (D, 1) linear
    map of the last features), as the published meta-dropout code's last layer; mu in evaluation
    mode and inside query_pass."""

    def __init__(self, in_features):
        super().__init__()
        self.generator = _Generator(nn.Linear(in_features, 1))

    def forward(self, x, mu, *, seed=None):
        if not self._sampling():
            return mu
        return ops.logit_noise(mu, self.generator(x), seed=seed)


class CoLearner(_OuterOnly):
    """CML's co-learner: a small head on the shared extractor's features, trained in the outer loop
    only; its loss `lam * loss_fn(co(features), targets)` joins the outer loss, then it is dropped.

    feature_shape (C, H, W): conv 3x3, conv 3x3 + 2x2 max-pool, linear (the published head; the
    pool is left out for maps smaller than 2x2, such as Conv-4's 1x1 on 28x28 Omniglot);
    feature_shape (D,): a two-layer MLP."""

    def __init__(self, feature_shape, num_outputs, *, hidden=None, lam=1.0):
        super().__init__()
        self.lam = lam
        feature_shape = tuple(feature_shape)
        if any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in feature_shape):
            raise ValueError(f"feature_shape must hold positive ints, got {feature_shape}")
        if len(feature_shape) == 3:
            c, h, w = feature_shape
            hidden = hidden or c
            pool = min(h, w) >= 2
            self.net = nn.Sequential(
                nn.Conv2d(c, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(),
                nn.Conv2d(hidden, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(),
                nn.MaxPool2d(2) if pool else nn.Identity(),
                nn.Flatten(), nn.Linear(hidden * (h // 2 if pool else h) * (w // 2 if pool else w), num_outputs))
        elif len(feature_shape) == 1:
            hidden = hidden or feature_shape[0]
            self.net = nn.Sequential(nn.Linear(feature_shape[0], hidden), nn.ReLU(), nn.Linear(hidden, num_outputs))
        else:
            raise ValueError(f"feature_shape must be (C, H, W) or (D,), got {tuple(feature_shape)}")

    def forward(self, features):
        return self.net(features)

    def loss(self, features, targets, loss_fn):
        """lam * loss_fn(co-learner(features), targets): add it to the meta-learner's outer loss."""
        return self.lam * loss_fn(self(features), targets)


class _HidesCoLearner:
    """Mixed into an nn.Sequential, ModuleList or ModuleDict that holds a co-learner: the container
    protocol (forward, iteration, length, indexing, keys) does not see it, parameters() and
    state_dict() do."""

    def _visible(self):
        return OrderedDict((k, m) for k, m in self._modules.items() if k != "co_learner")

    def __iter__(self):
        v = self._visible()
        return iter(v if isinstance(self, nn.ModuleDict) else v.values())

    def __len__(self):
        return len(self._visible())

    def __getitem__(self, idx):
        if isinstance(self, nn.ModuleDict):
            return self._visible()[idx]
        items = list(self._visible().values())
        return nn.Sequential(*items[idx]) if isinstance(idx, slice) else items[idx]

    def __contains__(self, key):
        return key in self._visible()

    def keys(self):
        return self._visible().keys()

    def items(self):
        return self._visible().items()

    def values(self):
        return self._visible().values()

    def __reduce_ex__(self, protocol):
        # The class mixed in at run time has no importable name: pickle (torch.save, deepcopy) the
        # container's own class and mix this in again on load.
        return _hiding_co_learner, (self._without_co_learner,), self.__getstate__()


@functools.cache
def _hiding_class(base):
    return type(base.__name__, (_HidesCoLearner, base), {"_without_co_learner": base})


def _hiding_co_learner(base):
    """An empty instance of base's co-learner-hiding class, for unpickling (the state follows)."""
    return base.__new__(_hiding_class(base))


_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def attach_co_learner(model, feature_shape, num_outputs, **kwargs):
    """Build a CoLearner as `model.co_learner` (so the outer optimizer sees it) and return it.
    The model's forward is unaffected, containers' included, until drop_co_learner."""
    if hasattr(model, "co_learner"):
        raise ValueError("model already has a co_learner; drop_co_learner(model) first")
    co = CoLearner(feature_shape, num_outputs, **kwargs)
    if isinstance(model, _CONTAINERS):
        model.__class__ = _hiding_class(model.__class__)
    model.add_module("co_learner", co)
    return co


def drop_co_learner(model):
    """Remove the co-learner for inference and return it."""
    co = model.co_learner
    del model._modules["co_learner"]
    if isinstance(model, _HidesCoLearner):
        model.__class__ = model._without_co_learner
    return co


def inner_parameters(model):
    """The parameters the inner loop adapts, by name: all but those of the meta-noise generators
    and the co-learner (outer loop only)."""
    outer = {id(p) for m in model.modules() if isinstance(m, _OuterOnly) for p in m.parameters()}
    return OrderedDict((n, p) for n, p in model.named_parameters() if id(p) not in outer)


@contextlib.contextmanager
def query_pass(model):
    """Meta-dropout's query passes: every MetaDropout and LogitNoise of model is deterministic inside."""
    noisy = [m for m in model.modules() if isinstance(m, _Noisy)]
    before = [m.deterministic for m in noisy]
    for m in noisy:
        m.deterministic = True
    try:
        yield model
    finally:
        for m, d in zip(noisy, before):
            m.deterministic = d


def mc_loss(loss_fn, *, training, samples=None):
    """The inner loss averaged over S forward passes with fresh noise (S = 1 while meta-training,
    30 at meta-test, the published defaults, unless `samples` is given)."""
    s = samples if samples is not None else (1 if training else 30)
    if isinstance(s, bool) or not isinstance(s, int) or s < 1:
        raise ValueError(f"samples must be a positive int, got {s!r}")
    total = loss_fn()
    for _ in range(s - 1):
        total = total + loss_fn()
    return total / s
