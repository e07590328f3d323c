"""DropGradSGD for ``higher``: importing this module registers the optimizer's differentiable twin
with ``higher.register_optim``, so ``higher.innerloop_ctx(model, DropGradSGD(model.parameters(), lr,
p=0.1))`` runs fused noisy updates. Needs ``higher`` (pip install higher); nothing else in
dropgrad_cuda imports it, and ``DropGradSGD`` itself lives in ``dropgrad_cuda.optim``."""
try:
    import higher
except ImportError as e:
    raise ImportError("dropgrad_cuda.integrations.higher needs the higher package: pip install higher") from e
from .. import optim
from ..optim import DropGradSGD  # noqa: F401  (re-exported: the optimizer higher.innerloop_ctx is given)
from . import _common


class DifferentiableDropGradSGD(higher.optim.DifferentiableOptimizer):
    """DropGradSGD as higher's differentiable optimizer: each step is one fused, differentiable update
    (second order through the noise, which is regenerated in backward).

    Its noise is an inner loop's, fresh for every task and step: with the optimizer's seed=None each
    step draws its seed from torch's generator, as the functional ops do (so tasks on different
    ranks get their own noise); with an int seed it reads on from the optimizer's stream, so a run
    reproduces (every rank reads the same stream: seed each rank differently if its tasks need
    their own noise)."""

    def __init__(self, other, *args, **kwargs):
        self._stream = other.noise_stream if other.noise_stream.seed is not None else None
        super().__init__(other, *args, **kwargs)

    def _update(self, grouped_grads, **kwargs):
        # Noise only while the patched model trains, as learn2learn and torchmeta read model.training.
        training = self._fmodel is None or self._fmodel.training
        for group, grads in zip(self.param_groups, grouped_grads):
            if group["momentum"] != 0:
                raise NotImplementedError("DifferentiableDropGradSGD: momentum is not supported in higher's "
                                          "differentiable inner loop; use momentum=0")
            params, live = group["params"], [w for w, g in zip(group["params"], grads) if g is not None]
            noise = optim.noisy(group, training)
            seed, offset = None, 0
            if noise and self._stream is not None and live:
                offsets = optim.stream_offsets([w.numel() for w in live])
                seed, offset = self._stream.take(offsets[-1] + optim.span(live[-1].numel()), live[0].device)
            params[:] = _common.step(params, optim.descent(group, params, grads), group["lr"], group["p"],
                                     group["mode"], seed=seed, offset=offset, training=noise,
                                     backend=group["backend"])


higher.register_optim(DropGradSGD, DifferentiableDropGradSGD)
