"""The Python side of the op layer's argument checks (csrc/ops.h). Each function tests the valid
case itself (what costs nothing per call, and what torch.compile traces) and, for a wrong argument,
calls the C++ check (torch.ops.dropgrad_checks), so the public functions, the reference's and
Triton's namespaces and the C++ kernels raise one exception with one message for one mistake."""
import torch

from . import _C  # noqa: F401  (loads the library that defines torch.ops.dropgrad_checks)
from .reference import span

FLOAT_DTYPES = frozenset((torch.float16, torch.bfloat16, torch.float32, torch.float64))


def _op():
    return torch.ops.dropgrad_checks


def stream(p, mode, offset, span):
    """p in [0, 1), mode 0..3, offset a non-negative multiple of 4 leaving room for span elements."""
    if not (0.0 <= p < 1.0 and 0 <= mode <= 3 and offset >= 0 and offset % 4 == 0 and offset + span < 1 << 63):
        _op().stream(p, mode, offset, span)


def list_stream(p, mode, offset, params):
    """stream() for a list call, whose stream is its tensors' spans."""
    stream(p, mode, offset, sum(span(w.numel()) for w in params))


def eps_stream(deterministic, offset, f):
    """stream() for the meta-dropout ops: the normal noise (mode 3), or none when deterministic."""
    stream(0.0, 0 if deterministic else 3, offset, f.numel())


def dtype(t, name):
    if t.dtype not in FLOAT_DTYPES:
        _op().dtype(t, name)


def pair(a, b, a_name, b_name):
    """b beside a: floating, a's shape, dtype and device."""
    if not (a.dtype is b.dtype and a.dtype in FLOAT_DTYPES and a.shape == b.shape and a.device == b.device):
        _op().pair(a, b, a_name, b_name)


def lr(l, param, name):
    """A tensor lr: floating, on param's device, 0-d or param's shape and dtype."""
    if not (l.is_floating_point() and l.device == param.device
            and (l.dim() == 0 or (l.shape == param.shape and l.dtype == param.dtype))):
        _op().lr(l, param, name)


def lists(params, grads, lrs, batch):
    """A list call: equal lengths, each pair as pair(), one device, each lr as lr(); with batch > 0
    each param holds the batch along dim 0 and an lr may also be one list's, param.shape[1:]."""
    if len(params) != len(grads) or (lrs and len(lrs) != len(params)) or batch < 0:
        _op().lists(params, grads, lrs, batch)
    for k, (w, g) in enumerate(zip(params, grads)):
        pair(w, g, f"params[{k}]", f"grads[{k}]")
        if w.device != params[0].device or (batch and (w.dim() == 0 or w.shape[0] != batch)):
            _op().lists(params, grads, lrs, batch)
        if lrs:
            one_list = batch and lrs[k].dim() > 0 and lrs[k].shape == w.shape[1:]
            lr(lrs[k], w[0] if one_list else w, f"lr[{k}]")
