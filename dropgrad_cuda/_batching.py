"""The batching rules of philox4x32_10 and cuda_rng_state for torch.func.vmap, for any namespace
of kernels. The noisy ops' rules are C++ (csrc/batching.cpp), where their host cost is what a
native batching rule's is; these two draw no noise from a stream and are off the hot path.
"""
import collections

import torch
from torch._functorch import pyfunctorch

_LIBS = {}  # the IMPL libraries holding the batching kernels, kept alive
_F = torch._C._functorch
_BELOW_BATCHED = torch._C.DispatchKeySet(torch._C.DispatchKey.FuncTorchBatched)
VmapInfo = collections.namedtuple("VmapInfo", "batch_size level")


def _batching_kernel(op, rule):
    """The FuncTorchBatched kernel of op: unwraps the tensors batched at the current vmap level,
    runs rule(info, in_dims, *args) below that level and wraps its output at out_dim (None: not
    batched). What torch.library.register_vmap does, through the private functorch calls it makes
    itself (torch 2.11 to 2.15), because register_vmap does not give a rule the vmap level."""
    def kernel(keyset, *args):
        interp = pyfunctorch.retrieve_current_functorch_interpreter()
        level = interp.level()
        pairs = [_F._unwrap_batched(a, level) if isinstance(a, torch.Tensor) else (a, None) for a in args]
        with torch._C._ExcludeDispatchKeyGuard(_BELOW_BATCHED):
            if all(d is None for _, d in pairs):  # nothing batched at this level: the op itself, one level down
                return op(*(a for a, _ in pairs))
            out, out_dim = rule(VmapInfo(interp.batch_size(), level), [d for _, d in pairs], *(a for a, _ in pairs))
        return out if out_dim is None else _F._add_batch_dim(out, out_dim, level)
    return kernel


def _front(x, d, size):
    """x with its batch dimension d first, or x (unbatched, d None) expanded to the batch size."""
    return x if d == 0 else x.movedim(d, 0) if d is not None else x.expand(size, *x.shape)


def register(ns, qualname_prefix):
    lib = _LIBS.setdefault(qualname_prefix, torch.library.Library(qualname_prefix, "IMPL"))

    def reg(name):
        def register_rule(rule):
            op = getattr(ns, name).default
            lib.impl(name, _batching_kernel(op, rule), "FuncTorchBatched", with_keyset=True)
        return register_rule

    @reg("philox4x32_10")
    def _(info, in_dims, counter, key):
        size = info.batch_size
        return ns.philox4x32_10(_front(counter, in_dims[0], size), _front(key, in_dims[1], size)), 0

    if qualname_prefix == "dropgrad":
        @reg("cuda_rng_state")
        def _(info, in_dims, like, numel):
            # The whole batch's streams from one reservation; the state itself is not batched.
            return ns.cuda_rng_state(like.select(in_dims[0], 0) if in_dims[0] is not None else like,
                                     numel * info.batch_size + 4 * info.batch_size), None
