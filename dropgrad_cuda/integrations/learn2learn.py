"""learn2learn's ``maml_update`` and MetaSGD's ``meta_sgd_update`` with DropGrad noise.

Same semantics (learn2learn/algorithms/maml.py, meta_sgd.py, utils.update_module): the module's
parameters are replaced in place by their updated tensors (on the clone you adapt), a parameter
shared by several submodules is updated once, and the module is returned. learn2learn itself is
not imported.
"""
from . import _common


def _replace(module, new_of):
    for m in module.modules():  # each shared submodule once; new_of maps every shared tensor to one update
        for name, w in m._parameters.items():
            if w is not None and id(w) in new_of:
                m._parameters[name] = new_of[id(w)]
        if hasattr(m, "flatten_parameters"):  # learn2learn re-flattens RNN weights after an update
            m._apply(lambda x: x)


def _update(model, lr, grads, p, mode, seed, training, backend):
    params = list(model.parameters())  # shared parameters appear once; _common.step checks grads' length
    training = model.training if training is None else training
    new = _common.step(params, grads, lr, p, mode, seed=seed, training=training, backend=backend)
    _replace(model, {id(w): n for w, n in zip(params, new) if n is not w})
    return model


def maml_update(model, lr, grads, p=0.1, mode="gaussian", *, seed=None, training=None, backend="auto"):
    """learn2learn.algorithms.maml.maml_update: w <- w - lr * (g * n) for every parameter of model.
    grads in model.parameters() order (None leaves a parameter as is); noise only while `training`
    (default model.training)."""
    return _update(model, lr, grads, p, mode, seed, training, backend)


def meta_sgd_update(model, lrs, grads, p=0.1, mode="gaussian", *, seed=None, training=None, backend="auto"):
    """learn2learn.algorithms.meta_sgd.meta_sgd_update: lrs holds one tensor per parameter (of its
    shape, learned), w <- w - lr_w * (g * n)."""
    lrs = list(lrs)
    return _update(model, lrs, grads, p, mode, seed, training, backend)
