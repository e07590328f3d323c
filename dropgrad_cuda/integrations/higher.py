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


def _group_step(group, params, grads, training=True):
    """New tensors: w - lr * ((g + weight_decay * w) * n), one fused dropgrad_step."""
    return _common.step(params, optim.descent(group, params, grads), group["lr"], group["p"], group["mode"],
                        seed=group["seed"], training=optim.noisy(group, training), backend=group["backend"])


class DifferentiableDropGradSGD(higher.optim.DifferentiableOptimizer):
    """DropGradSGD as higher's differentiable optimizer: each step is one fused, differentiable update
    (second order through the noise, which is regenerated in backward)."""

    def _update(self, grouped_grads, **kwargs):
        # Noise only while the patched model trains, as learn2learn and torchmeta read model.training.
        training = self._fmodel is None or self._fmodel.training
        for group, grads in zip(self.param_groups, grouped_grads):
            if group["momentum"] != 0:
                raise NotImplementedError("DifferentiableDropGradSGD: momentum is not supported in higher's "
                                          "differentiable inner loop; use momentum=0")
            group["params"][:] = _group_step(group, group["params"], grads, training)


higher.register_optim(DropGradSGD, DifferentiableDropGradSGD)
