"""The public ops: argument checks, seeds, and the choice of backend. Autograd lives with the ops
themselves (csrc/autograd.cpp), so every backend's kernels are differentiable to any order."""
import math
import numbers
import os

import torch
import torch.nn.functional as F
from torch._C._functorch import TransformType
from torch._functorch import pyfunctorch

from . import _C, _checks, _fakes, _reference_ops, reference
from ._table import OP_NAMES
from .reference import MODES, noise_mode

BACKENDS = ("auto", "cpu", "cuda", "triton", "cuda-emulated", "reference")
_FLOAT_DTYPES = _checks.FLOAT_DTYPES
_USER_MODES = {k: v for k, v in MODES.items() if k != "normal"}  # "normal" is logit_noise's, internal
_SEED_MOD = 1 << 64

_fakes.register(torch.ops.dropgrad, "dropgrad")


# Read once: a constant is what torch.compile can trace through (the dispatcher query is not).
_CUDA_KERNELS = torch._C._dispatch_has_kernel_for_dispatch_key("dropgrad::drop_grad", "CUDA")


def cuda_kernels_built():
    return _CUDA_KERNELS


def _has_namespace(ns):
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"{ns}::drop_grad", "CPU")
    except RuntimeError:  # no such op: the library was built without it
        return False


# The CUDA kernels' source compiled for the host (csrc/emulated), present wherever the build found
# the CUDA headers; a test and debugging backend.
_EMULATED = _has_namespace("dropgrad_emulated")
if _EMULATED:
    _fakes.register(torch.ops.dropgrad_emulated, "dropgrad_emulated")


def cuda_emulator_built():
    return _EMULATED


def _triton_ops():
    """torch.ops.dropgrad_triton, importing the Triton backend on first use."""
    try:
        from .triton_kernels import ops as triton_ops  # noqa: F401
    except ImportError as e:  # triton missing or not yet built for this platform
        raise RuntimeError(f"backend='triton' is unavailable: {e}") from e
    return torch.ops.dropgrad_triton


_NATIVE_KERNELS = torch.ops.dropgrad  # the C++ kernels, CPU and CUDA (their dispatch keys pick)


def _kernels(backend, where):
    """The namespace of ops that runs `backend` where a tensor (or on a torch.device) is; every
    namespace, the reference's too (dropgrad_cuda._reference_ops), has the schemas of csrc/ops.cpp."""
    device = where if isinstance(where, torch.device) else None
    if backend == "auto" and device is None and where.is_cpu:  # the common call, first
        return _NATIVE_KERNELS
    device = device or where.device
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device.type == "cpu":
            backend = "cpu"
        elif device.type == "cuda":
            backend = "cuda" if cuda_kernels_built() else "triton"
        else:
            raise RuntimeError(f"no dropgrad_cuda backend runs on device {device}")
    if backend == "reference":
        return _reference_ops
    if backend == "cuda-emulated":
        if device.type != "cpu":
            raise RuntimeError(f"backend='cuda-emulated' runs the CUDA kernels on CPU tensors, got tensors on {device}")
        if not cuda_emulator_built():
            raise RuntimeError("backend='cuda-emulated' is unavailable: dropgrad_cuda was built without the CUDA "
                               "headers (cuda_fp16.h)")
        return torch.ops.dropgrad_emulated
    if backend == "cpu":
        if device.type != "cpu":
            raise RuntimeError(f"backend='cpu' needs CPU tensors, got tensors on {device}")
        return torch.ops.dropgrad
    if backend == "cuda":
        if device.type != "cuda":
            raise RuntimeError(f"backend='cuda' needs CUDA tensors, got tensors on {device}")
        if not cuda_kernels_built():
            raise RuntimeError("backend='cuda' is unavailable: dropgrad_cuda was built without its CUDA kernels")
        return torch.ops.dropgrad
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("backend='triton' on CPU tensors needs TRITON_INTERPRET=1 (Triton's interpreter)")
    return _triton_ops()


# ---------------------------------------------------------------- argument checks
# The Python layer checks what the op layer cannot see (Python types, seed=None); the rest are the
# op layer's own checks (csrc/ops.h) through _checks, which tests the valid case in Python.
def _check_tensor(t, name):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    _checks.dtype(t, name)


def _check_pair(a, b, an, bn):
    if (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype is b.dtype
            and a.dtype in _FLOAT_DTYPES and a.shape == b.shape and a.device == b.device):
        return  # the common call; otherwise name what is wrong
    _check_tensor(a, an)
    _check_tensor(b, bn)
    _checks.pair(a, b, an, bn)


def _check_p(p):
    if type(p) is float and 0.0 <= p < 1.0:
        return p
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"p must be a real number, got {type(p).__name__}")
    p = float(p)
    _checks.stream(p, 0, 0, 0)
    return p


def _check_mode(mode):
    try:
        return _USER_MODES[mode]
    except (KeyError, TypeError):
        raise ValueError(f"mode must be 'gaussian', 'bernoulli' or 'none', got {mode!r}") from None


def _noisy(p, mode):
    return noise_mode(MODES[mode], p) != MODES["none"]


def _check_int(v, name):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    return int(v)


def _rng(seed, like, numel, kernels, noisy=True):
    """(seed, rng_state) for a kernel call.

    - No noise (p == 0, mode "none", deterministic): nothing is drawn from any generator.
    - seed=None on a CUDA kernel backend: `numel` elements of torch's CUDA generator, reserved on
      the device (rng_state, CUDA-graph safe).
    - Under torch.compile: the seed becomes a tensor of the graph (rng_state), drawn by a traced
      randint when None, so one graph gives fresh noise every call and a changing seed does not
      recompile.
    - Otherwise one int seed, drawn from torch's default generator when None (torch.manual_seed
      reproduces a run)."""
    if not noisy:
        return (0 if seed is None else _seed(seed)), None
    if kernels is _reference_ops and any(i.key() == TransformType.Vmap
                                         for i in pyfunctorch.retrieve_all_functorch_interpreters()):
        raise NotImplementedError("backend='reference' has no batching rule for its noise (every batch element "
                                  "would get the same stream): under vmap use a kernel backend")
    if kernels is not _reference_ops:
        if seed is None and like.is_cuda and cuda_kernels_built():
            return 0, torch.ops.dropgrad.cuda_rng_state(like, numel)
        if torch.compiler.is_compiling():
            s = (torch.randint(0, 2**63 - 1, (), device=like.device) if seed is None
                 else torch.scalar_tensor(_seed(seed), dtype=torch.int64, device=like.device))
            return 0, torch.stack([s, torch.zeros_like(s)])
    return _seed(seed), None


def _seed(seed):
    """The seed as the ops' int64 argument (two's complement of a 64-bit seed); None draws one
    from torch's default generator (the batching rules derive each element's stream from it)."""
    if seed is None:
        return _C.draw_seed()  # a C call: nothing a torch.func transform could batch or refuse
    seed = _check_int(seed, "seed")
    if not 0 <= seed < _SEED_MOD:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    return seed - _SEED_MOD if seed >= 1 << 63 else seed


def _offset(offset, numel):
    if offset == 0 and type(offset) is int:
        return 0
    offset = _check_int(offset, "offset")
    if offset >= 1 << 63:  # what the op layer's int64 cannot receive
        raise ValueError(f"offset must be a non-negative multiple of 4 below 2**63 - numel, got {offset}")
    _checks.stream(0.0, 0, offset, numel)
    return offset


def _check_lr(lr, param, name="lr"):
    """A Python float (returned as (None, lr)) or a tensor: 0-d or of param's shape (returned as (lr, 0.0))."""
    if type(lr) is float and not torch.compiler.is_compiling():
        return None, lr
    if isinstance(lr, torch.Tensor):
        _checks.lr(lr, param, name)
        return lr, 0.0
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
        raise TypeError(f"{name} must be a float or a tensor, got {type(lr).__name__}")
    if torch.compiler.is_compiling():  # a graph input, not a constant: a new lr does not recompile
        return torch.scalar_tensor(lr, dtype=torch.float64, device=param.device), 0.0
    return None, float(lr)


# ---------------------------------------------------------------- public ops
def drop_grad(grad, p, mode="gaussian", *, seed=None, offset=0, backend="auto"):
    """grad * n, n the DropGrad noise of the contract (docs/noise_contract.md)."""
    _check_tensor(grad, "grad")
    p, m = _check_p(p), _check_mode(mode)
    offset = _offset(offset, grad.numel())
    k = _kernels(backend, grad)
    seed, state = _rng(seed, grad, grad.numel(), k, _noisy(p, mode))
    return k.drop_grad.default(grad, p, m, seed, offset, state)


def dropgrad_update(param, grad, lr, p, mode="gaussian", *, seed=None, offset=0, backend="auto"):
    """param - lr * (grad * n): the DropGrad inner update, differentiable in param, grad and a tensor lr."""
    _check_pair(param, grad, "param", "grad")
    lr_t, lr_f = _check_lr(lr, param)
    p, m = _check_p(p), _check_mode(mode)
    offset = _offset(offset, param.numel())
    k = _kernels(backend, param)
    seed, state = _rng(seed, param, param.numel(), k, _noisy(p, mode))
    return k.dropgrad_update.default(param, grad, lr_t, lr_f, p, m, seed, offset, state)


def dropgrad_step(params, grads, lr, p, mode="gaussian", *, seed=None, offset=0, backend="auto"):
    """dropgrad_update over a list of tensors in one fused pass; returns the new params.

    lr: a float, one tensor (0-d, shared by all), or a list with one tensor per param (Meta-SGD
    tensors or MAML++ per-layer scalars). Tensor k's noise starts where tensor k-1's ends,
    rounded up to a multiple of 4.
    """
    return _step("dropgrad_step", params, grads, lr, p, mode, seed, offset, backend)


def dropgrad_step_(params, grads, lr, p, mode="gaussian", *, weight_decay=0.0, seed=None, offset=0, backend="auto"):
    """The optimizer's in-place form of dropgrad_step: params -= lr * ((grads + weight_decay *
    params) * n), one fused pass over the list that reads and writes each param once. Not
    differentiable (an optimizer step runs under torch.no_grad()); the noise is dropgrad_step's
    for the same seed and offset."""
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, numbers.Real):
        raise TypeError(f"weight_decay must be a real number, got {type(weight_decay).__name__}")
    if not math.isfinite(weight_decay):
        raise ValueError(f"weight_decay must be finite, got {weight_decay}")
    params = list(params)
    if torch.is_grad_enabled() and any(isinstance(w, torch.Tensor) and w.requires_grad for w in params):
        # The kernel backends' autograd refuses this too (csrc/autograd.cpp); here for every backend.
        raise RuntimeError("dropgrad_step_ updates params in place and is not differentiable: call it under "
                           "torch.no_grad() (as an optimizer step does), or use dropgrad_step for new tensors")
    if torch._C._are_functorch_transforms_active():
        raise RuntimeError("dropgrad_step_ updates params in place and is not supported under torch.func transforms: "
                           "use dropgrad_step, which returns new tensors")
    _check_disjoint(params)
    _step("dropgrad_step_", params, grads, lr, p, mode, seed, offset, backend, float(weight_decay))


def _check_disjoint(params):
    """Refuses params that share memory. Two updates of one element would each read the other's
    input or output depending on the backend's order and, on parallel backends, race; PyTorch's
    in-place ops refuse an output whose elements overlap for the same reason. The check is on
    memory spans, so interleaved views of one tensor (a matrix's columns) are refused too."""
    spans = []
    for i, w in enumerate(params):
        if not isinstance(w, torch.Tensor) or w.numel() == 0:
            continue  # a non-tensor is named by the list checks; an empty tensor has no memory
        if any(st == 0 and n > 1 for n, st in zip(w.shape, w.stride())):
            raise ValueError(f"params[{i}] is an expanded view (stride 0): an in-place update would write "
                             "one element several times")
        start = w.data_ptr()
        end = start + (1 + sum((n - 1) * st for n, st in zip(w.shape, w.stride()))) * w.element_size()
        spans.append((start, end, i))
    spans.sort()
    for (s0, e0, i), (s1, e1, j) in zip(spans, spans[1:]):
        if s1 < e0:
            i, j = sorted((i, j))
            raise ValueError(f"params[{j}] overlaps params[{i}] in memory: dropgrad_step_ updates each param "
                             "once, in place; pass each tensor once")


def _step(name, params, grads, lr, p, mode, seed, offset, backend, *weight_decay):
    """The checks and the call of dropgrad_step (new tensors) and dropgrad_step_ (in place)."""
    params, grads = list(params), list(grads)
    if len(params) != len(grads):
        _checks.lists(params, grads, [], 0)
    if not params:
        return []
    if not isinstance(params[0], torch.Tensor):
        _check_lists(params, grads)
    k = _kernels(backend, params[0])
    if k is not torch.ops.dropgrad:
        _check_lists(params, grads)  # the C++ kernels check every pair themselves, at no Python cost
    if isinstance(lr, (list, tuple)):
        if len(lr) != len(params):
            _checks.lists(params, grads, [torch.empty(())] * len(lr), 0)
        lrs = [_check_lr(l, w, f"lr[{i}]")[0] for i, (l, w) in enumerate(zip(lr, params))]
        if any(l is None for l in lrs):
            raise TypeError("a list lr must hold tensors; pass a single float for one step size")
        lr_f = 0.0
    else:
        lr_t, lr_f = _check_lr(lr, params[0])
        if lr_t is not None and lr_t.dim() != 0:
            raise ValueError("a single lr tensor shared by all params must be 0-d; pass a list for per-param tensors")
        lrs = [] if lr_t is None else [lr_t] * len(params)
    p, m = _check_p(p), _check_mode(mode)
    # The stream's span only matters for a nonzero offset's range and the CUDA generator's reservation.
    span = sum(reference.span(w.numel()) for w in params) if offset or params[0].is_cuda else 0
    offset = _offset(offset, span)
    seed, state = _rng(seed, params[0], span, k, _noisy(p, mode))
    try:
        return getattr(k, name).default(params, grads, lrs, lr_f, *weight_decay, p, m, seed, offset, state)
    except (RuntimeError, TypeError, AttributeError):
        _check_lists(params, grads)  # name the offending pair if the kernel objected to one
        raise


def _check_lists(params, grads):
    for i, (w, g) in enumerate(zip(params, grads)):
        _check_pair(w, g, f"params[{i}]", f"grads[{i}]")  # Python types first
    _checks.lists(params, grads, [], 0)


def meta_dropout(f, a, *, deterministic=False, seed=None, offset=0, backend="auto"):
    """f * softplus(a + eps), eps ~ N(0, I) from the stream; f * softplus(a) when deterministic."""
    _check_pair(f, a, "f", "a")
    if not isinstance(deterministic, bool):
        raise TypeError(f"deterministic must be a bool, got {type(deterministic).__name__}")
    offset = _offset(offset, f.numel())
    k = _kernels(backend, f)
    seed, state = _rng(seed, f, f.numel(), k, not deterministic)
    return k.meta_dropout.default(f, a, deterministic, seed, offset, state)


def logit_noise(mu, s, *, deterministic=False, seed=None, offset=0, backend="auto"):
    """mu + softplus(s) * eps: the additive logit noise of the published meta-dropout code's last
    layer, s one scale per example broadcast over classes (e.g. shape (B, 1) for logits (B, C)).
    One fused update kernel (mode "normal", lr = -1) draws eps and adds; mu when deterministic."""
    _check_tensor(mu, "mu")
    _check_tensor(s, "s")
    if s.dtype != mu.dtype:
        raise TypeError(f"s must have mu's dtype {mu.dtype}, got {s.dtype}")
    if s.device != mu.device:
        raise ValueError(f"s is on {s.device} but mu is on {mu.device}")
    if not isinstance(deterministic, bool):
        raise TypeError(f"deterministic must be a bool, got {type(deterministic).__name__}")
    try:
        fits = torch.broadcast_shapes(s.shape, mu.shape) == mu.shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"s of shape {tuple(s.shape)} must broadcast to mu's shape {tuple(mu.shape)}")
    offset = _offset(offset, mu.numel())
    k = _kernels(backend, mu)
    if deterministic:
        return mu
    seed, state = _rng(seed, mu, mu.numel(), k)
    scale = F.softplus(s).expand(mu.shape)
    return k.dropgrad_update.default(mu, scale, None, -1.0, 0.0, MODES["normal"], seed, offset, state)


def philox4x32_10(counter, key, *, backend="auto"):
    """The raw generator: counter int64 (..., 4) and key int64 (..., 2) of 32-bit words -> int64 (..., 4)."""
    for t, name, last in ((counter, "counter", 4), (key, "key", 2)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != torch.int64:
            raise TypeError(f"{name} must be an int64 tensor, got {t.dtype}")
        if t.dim() == 0 or t.shape[-1] != last:
            raise ValueError(f"{name} must have shape (..., {last}), got {tuple(t.shape)}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= 1 << 32):
            raise ValueError(f"{name} must hold 32-bit words in [0, 2**32)")
    if key.device != counter.device:
        raise ValueError(f"key is on {key.device} but counter is on {counter.device}")
    try:
        key = key.expand(*counter.shape[:-1], 2)
    except RuntimeError as e:
        raise ValueError(f"key of shape {tuple(key.shape)} does not broadcast to counter's {tuple(counter.shape)}") from e
    k = _kernels(backend, counter)
    return k.philox4x32_10(counter, key)
