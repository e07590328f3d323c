"""Modules for the regularizers: Meta-Dropout blocks and logit noise, the CML co-learner, and the
helpers an inner loop needs (which parameters adapt, query-pass switch, Monte Carlo inner loss)."""
import contextlib
import copy
from collections import OrderedDict

import torch
from torch import nn

from . import ops


class _OuterOnly(nn.Module):
    """A module whose parameters are learned in the outer loop only (never adapted by the inner loop)."""


class MetaDropout(nn.Module):
    """h = layer(x) * softplus(generator(x) + eps), eps ~ N(0, I): the block of the published
    meta-dropout code, `layer` (theta) adapted in the inner loop, `generator` (phi) a copy of its
    shape fed by the same input and learned in the outer loop only. Sampled unless
    `deterministic` (the query passes: use `query_pass(model)`)."""

    def __init__(self, layer, generator=None):
        super().__init__()
        self.layer = layer
        self.generator = _Generator(generator if generator is not None else _fresh_copy(layer))
        self.deterministic = False

    def forward(self, x, *, seed=None):
        return ops.meta_dropout(self.layer(x), self.generator(x), deterministic=self.deterministic, seed=seed)


class _Generator(_OuterOnly):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)


def _fresh_copy(layer):
    g = copy.deepcopy(layer)
    for m in g.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return g


class LogitNoise(nn.Module):
    """logits = mu + softplus(s) * eps with s = generator(x) one scalar per example (a (D, 1) linear
    map of the last features), as the published meta-dropout code's last layer; mu when deterministic."""

    def __init__(self, in_features):
        super().__init__()
        self.generator = _Generator(nn.Linear(in_features, 1))
        self.deterministic = False

    def forward(self, x, mu, *, seed=None):
        return ops.logit_noise(mu, self.generator(x), deterministic=self.deterministic, seed=seed)


class CoLearner(_OuterOnly):
    """CML's co-learner: a small head on the shared extractor's features, trained in the outer loop
    only; its loss `lam * loss_fn(co(features), targets)` joins the outer loss, then it is dropped.

    feature_shape (C, H, W): conv 3x3, conv 3x3 + 2x2 max-pool, linear (the published head);
    feature_shape (D,): a two-layer MLP."""

    def __init__(self, feature_shape, num_outputs, *, hidden=None, lam=1.0):
        super().__init__()
        self.lam = lam
        if len(feature_shape) == 3:
            c, h, w = feature_shape
            hidden = hidden or c
            self.net = nn.Sequential(
                nn.Conv2d(c, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(),
                nn.Conv2d(hidden, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(), nn.MaxPool2d(2),
                nn.Flatten(), nn.Linear(hidden * (h // 2) * (w // 2), num_outputs))
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


def attach_co_learner(model, feature_shape, num_outputs, **kwargs):
    """Build a CoLearner as `model.co_learner` (so the outer optimizer sees it) and return it."""
    model.co_learner = CoLearner(feature_shape, num_outputs, **kwargs)
    return model.co_learner


def drop_co_learner(model):
    """Remove the co-learner for inference and return it."""
    co = model.co_learner
    del model.co_learner
    return co


def inner_parameters(model):
    """The parameters the inner loop adapts, by name: all but those of the meta-noise generators
    and the co-learner (outer loop only)."""
    outer = {id(p) for m in model.modules() if isinstance(m, _OuterOnly) for p in m.parameters()}
    return OrderedDict((n, p) for n, p in model.named_parameters() if id(p) not in outer)


@contextlib.contextmanager
def query_pass(model):
    """Meta-dropout's query passes: every MetaDropout and LogitNoise of model is deterministic inside."""
    noisy = [m for m in model.modules() if isinstance(m, (MetaDropout, LogitNoise))]
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
