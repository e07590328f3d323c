"""One-line drop-ins for the inner loops people already write.

- ``func.inner_step``: dicts of tensors for ``torch.func.functional_call`` loops (MAML, Meta-SGD, MAML++ LSLR).
- ``torchmeta.gradient_update_parameters``: torchmeta's function with DropGrad noise.
- ``learn2learn.maml_update`` / ``learn2learn.meta_sgd_update``: learn2learn's in-place module updates.
- ``higher.DropGradSGD``: an SGD optimizer whose differentiable twin ``higher.innerloop_ctx`` picks up.

None of these libraries is imported unless you import its module here (and only ``higher`` is needed
for its own). Every path makes one fused ``dropgrad_step`` call per inner step; ``mode="none"``,
``p=0`` or evaluation mode give exactly the library's stock update.
"""
