"""torchmeta's ``gradient_update_parameters`` with DropGrad noise (same arguments, plus the noise's)."""
from collections import OrderedDict

import torch

from . import _common


def gradient_update_parameters(model, loss, params=None, step_size=0.5, first_order=False, *, p=0.1,
                               mode="gaussian", seed=None, training=None, backend="auto"):
    """As torchmeta.utils.gradient_update_parameters: params an OrderedDict (default the model's
    meta-parameters), step_size a float or a dict of step sizes by name; returns the updated
    OrderedDict. Noise only while `training` (default model.training)."""
    if params is None:
        named = model.meta_named_parameters() if hasattr(model, "meta_named_parameters") else model.named_parameters()
        params = OrderedDict(named)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=not first_order)
    if isinstance(step_size, dict):
        lr = [step_size[name] for name in params]
    else:
        lr = step_size
    training = model.training if training is None else training
    new = _common.step(params.values(), grads, lr, p, mode, seed=seed, training=training, backend=backend)
    return OrderedDict(zip(params, new))
