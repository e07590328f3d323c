"""The fake (meta) implementation of every op of the table (csrc/ops.cpp), for torch.compile and
opcheck, registered once for any namespace of kernels (with the two Python batching rules of
_batching.py). One rule derives each from its schema, the layout rule the kernels follow
(docs/noise_contract.md, "Memory layouts"): each output takes the shape, dtype and
preserve_format layout of the op's first tensor argument (of each of its tensors, for a list; a
batch of lists is contiguous), but noise's, which is float32. An op returning nothing writes its
arguments in place. The ops' autograd is C++ (csrc/autograd.cpp)."""
import torch

from . import _batching, _checks
from ._table import SCHEMAS, tensor_arguments
from .reference import empty_in_layout


def _fake(schema):
    first = tensor_arguments(schema)[0]
    names = [a.name for a in schema.arguments]
    dtype = torch.float32 if schema.name == "noise" else None
    lists = str(schema.arguments[first].type) == "List[Tensor]"

    def fake(*args, **kwargs):
        bound = {**dict(zip(names, args)), **kwargs}
        x = bound[names[first]]
        if lists:  # a meta tensor among CPU ones dispatches here, not to a kernel: check as the kernels do
            _checks.lists(bound["params"], bound["grads"], bound["lrs"], bound.get("batch", 0))
            outs = [empty_in_layout(w, dtype, contiguous=bound.get("batch", 0) > 0) for w in x]
            return outs if schema.returns else None
        outs = tuple(empty_in_layout(x, dtype) for _ in schema.returns)
        return outs[0] if len(outs) == 1 else outs

    return fake


def register(ns, qualname_prefix):
    for schema in SCHEMAS:
        torch.library.register_fake(f"{qualname_prefix}::{schema.name}")(_fake(schema))
    if qualname_prefix == "dropgrad":  # the CUDA generator's state: [seed, offset] on the device
        @torch.library.register_fake("dropgrad::cuda_rng_state")
        def _(like, numel):
            return torch.empty(2, dtype=torch.int64, device=like.device)

    _batching.register(ns, qualname_prefix)
