"""Host side of the Triton backend: launches the kernels and registers them as the CPU and CUDA
kernels of torch.ops.dropgrad_triton.*, whose schemas and autograd are the C++ dropgrad:: ops'."""
import math

import torch
import triton

from dropgrad_cuda import _checks, _fakes
from dropgrad_cuda._table import OP_NAMES
from dropgrad_cuda.reference import dense, empty_in_layout, in_layout, noise_mode, span, stream_offsets

from . import configs
from . import kernels as K

NAMESPACE = "dropgrad_triton"  # its schemas and autograd are C++ (csrc/ops.cpp, csrc/autograd.cpp)
_lib = torch.library.Library(NAMESPACE, "IMPL")


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tl(dtype):
    return getattr(triton.language, str(dtype).split(".")[-1])


def _scalars(p):
    """float32 Bernoulli threshold, 1/(1-p) and sqrt(p/(1-p)), rounded from double as in dg::make_noise_params."""
    return p, 1.0 / (1.0 - p), math.sqrt(p / (1.0 - p))


def _grid(numel):
    return (triton.cdiv(numel, 4 * K.ROWS),)


def _launch(kernel, grid, *args, **meta):
    if configs.key(kernel, meta) not in configs.LAUNCHABLE:  # compiled ahead of time and checked for spills
        raise RuntimeError(f"Triton configuration {meta} of {kernel} is not in triton_kernels/configs.py")
    # enable_fp_fusion=False: no FMA contraction on the GPU, as the contract's operation order needs.
    if grid[0] > 0:
        kernel[grid](*args, num_warps=K.NUM_WARPS, enable_fp_fusion=False, **meta)


def _scalar_lr(lr_tensor, lr, like):
    """A one-element lr as a 0-d tensor of the compute dtype (read like the C++ kernels' double)."""
    src = lr_tensor if lr_tensor is not None else torch.tensor(lr, dtype=torch.float64)
    return src.detach().reshape(()).to(device=like.device, dtype=_acc(like.dtype))


def _state(rng_state, like, noisy=True):
    """(pointer argument, HAS_STATE) for an optional rng_state [seed, offset] (unread without noise)."""
    if rng_state is None or not noisy:
        return like, False
    if rng_state.dtype != torch.int64 or rng_state.numel() != 2 or rng_state.device != like.device:
        raise RuntimeError(f"rng_state must be an int64 tensor [seed, offset] on {like.device}")
    return rng_state.contiguous(), True


def _elementwise(kind, out, grad, param, lr_t, numel, p, mode, seed, offset, rng_state):
    _checks.stream(p, mode, offset, numel)
    lr_full = lr_t is not None and lr_t.dim() > 0
    mode = noise_mode(mode, p)
    state, has_state = _state(rng_state, out, mode != 0)
    _launch(K.elementwise_kernel, _grid(numel), out, grad if grad is not None else out, param if param is not None else out,
            lr_t if lr_t is not None else out, state, numel, seed, offset // 4, *_scalars(p),
            KIND=kind, MODE=mode, LR_FULL=lr_full, ACC=_tl(_acc(out.dtype)), HAS_STATE=has_state)
    return out


def noise(like, p, mode, seed, offset, rng_state=None):
    out = empty_in_layout(like, torch.float32)
    return _elementwise(K.NOISE, out, None, None, None, out.numel(), p, mode, seed, offset, rng_state)


def drop_grad(grad, p, mode, seed, offset, rng_state=None):
    _checks.dtype(grad, "grad")
    out = empty_in_layout(grad)
    return _elementwise(K.DROP_GRAD, out, in_layout(grad, out), None, None, out.numel(), p, mode, seed, offset, rng_state)


def _lr_arg(lr_tensor, lr, param):
    """A full-shape lr (param's dtype) in param's layout, one list's in a batch contiguous; one
    element: a scalar, as in C++. param: as the kernel reads it (in its output's layout)."""
    if lr_tensor is not None and lr_tensor.numel() != 1:
        return lr_tensor.detach().contiguous() if lr_tensor.shape != param.shape else in_layout(lr_tensor.detach(), param)
    return _scalar_lr(lr_tensor, lr, param)


def dropgrad_update(param, grad, lr_tensor, lr, p, mode, seed, offset, rng_state=None):
    _checks.pair(param, grad, "param", "grad")
    if lr_tensor is not None:
        _checks.lr(lr_tensor, param, "lr")
    out = empty_in_layout(param)
    w, g = in_layout(param, out), in_layout(grad, out)
    return _elementwise(K.UPDATE, out, g, w, _lr_arg(lr_tensor, lr, w), w.numel(), p, mode, seed, offset,
                        rng_state)


def _step(params, grads, lrs, lr, weight_decay, p, mode, seed, offset, rng_state, in_place, batch=0):
    """One launch per dtype present in the list (a single launch for the usual all-float32 list).
    With batch > 0 each tensor is `batch` rows, one per list, each a row of the launch's table
    starting list b's stream b list spans after list 0's. In place, the outputs are the params, one
    that is not dense through a copy written back."""
    _checks.list_stream(p, mode, offset, params)
    _checks.lists(params, grads, lrs, batch)
    nrows = max(batch, 1)
    # In place, a dense param is written where it lies; another through a contiguous copy.
    outs = ([w if dense(w) else w.contiguous() for w in params] if in_place
            else [empty_in_layout(w, contiguous=batch > 0) for w in params])
    ws = outs if in_place else [in_layout(w, o) for w, o in zip(params, outs)]
    gs = [in_layout(g, o) for g, o in zip(grads, outs)]
    lr_args = [_lr_arg(lrs[k] if lrs else None, lr, w) for k, w in enumerate(ws)]  # kept alive until launched
    row_numels = [w.numel() // nrows for w in ws]
    starts = stream_offsets(row_numels, offset)
    list_span = sum(map(span, row_numels))
    mode = noise_mode(mode, p)
    by_dtype = {}
    for k, w in enumerate(ws):
        if w.numel():
            by_dtype.setdefault(w.dtype, []).append(k)
    for dtype, ks in by_dtype.items():
        table, blocks, first = [], [], 0
        for k in ks:
            n, size = row_numels[k], ws[k].element_size()
            full = lr_args[k].dim() > 0
            lr_row = n * size if full and lr_args[k].shape == ws[k].shape else 0  # 0: one lr shared by the lists
            for b in range(nrows):
                cells = {"param": ws[k].data_ptr() + b * n * size, "grad": gs[k].data_ptr() + b * n * size,
                         "out": outs[k].data_ptr() + b * n * size, "lr": lr_args[k].data_ptr() + b * lr_row,
                         "numel": n, "q0": (starts[k] + b * list_span) // 4, "first_block": first,
                         "lr_is_full": int(full)}
                vectors = ("param", "grad", "out", "lr") if full else ("param", "grad", "out")
                cells["aligned"] = int(all(cells[c] % 16 == 0 for c in vectors))
                table.append([cells[c] for c in K.TABLE_COLUMNS])
                blocks.append(triton.cdiv(n, 4 * K.STEP_ROWS))
                first += blocks[-1]
        device = ws[ks[0]].device
        table = torch.tensor(table, dtype=torch.int64).to(device, non_blocking=True)
        block_tensor = torch.repeat_interleave(torch.arange(len(blocks), dtype=torch.int32), torch.tensor(blocks))
        block_tensor = block_tensor.to(device, non_blocking=True)
        state, has_state = _state(rng_state, ws[ks[0]], mode != 0)
        # Without weight decay wd_ptr is never read: the table stands in, no tensor is made and copied.
        wd = torch.tensor(weight_decay, dtype=_acc(dtype)).to(device, non_blocking=True) if weight_decay else table
        _launch(K.step_kernel, (first,), table, block_tensor, state, wd, seed, *_scalars(p), MODE=mode,
                DTYPE=_tl(dtype), ACC=_tl(_acc(dtype)), HAS_STATE=has_state, HAS_WD=weight_decay != 0.0)
    if in_place:
        for w, o in zip(params, outs):
            if o is not w:
                w.copy_(o)
    return outs


def dropgrad_step(params, grads, lrs, lr, p, mode, seed, offset, rng_state=None, batch=0):
    return _step(params, grads, lrs, lr, 0.0, p, mode, seed, offset, rng_state, False, batch)


def dropgrad_step_(params, grads, lrs, lr, weight_decay, p, noise_mode, seed, offset, rng_state=None):
    _step(params, grads, lrs, lr, weight_decay, p, noise_mode, seed, offset, rng_state, True)


def meta_dropout(f, a, deterministic, seed, offset, rng_state=None):
    _checks.eps_stream(deterministic, offset, f)
    _checks.pair(f, a, "f", "a")
    out = empty_in_layout(f)
    fc, ac = in_layout(f, out), in_layout(a, out)
    state, has_state = _state(rng_state, fc, not deterministic)
    _launch(K.meta_dropout_kernel, _grid(fc.numel()), out, fc, ac, state, fc.numel(), seed, offset // 4,
            NOISY=not deterministic, ACC=_tl(_acc(fc.dtype)), HAS_STATE=has_state)
    return out


def meta_dropout_backward(grad_out, f, a, deterministic, seed, offset, rng_state=None):
    _checks.eps_stream(deterministic, offset, f)
    gf, ga = empty_in_layout(f), empty_in_layout(f)
    fc, ac, g = in_layout(f, gf), in_layout(a, gf), in_layout(grad_out.to(f.dtype), gf)
    state, has_state = _state(rng_state, fc, not deterministic)
    _launch(K.meta_dropout_backward_kernel, _grid(fc.numel()), gf, ga, g, fc, ac, state, fc.numel(), seed, offset // 4,
            NOISY=not deterministic, ACC=_tl(_acc(fc.dtype)), HAS_STATE=has_state)
    return gf, ga


def meta_dropout_double_backward(grad_grad_f, grad_grad_a, grad_out, f, a, deterministic, seed, offset, rng_state=None):
    _checks.eps_stream(deterministic, offset, f)
    outs = [empty_in_layout(f) for _ in range(3)]
    fc = in_layout(f, outs[0])
    ins = [in_layout(t.to(fc.dtype), fc) for t in (grad_grad_f, grad_grad_a, grad_out)]
    state, has_state = _state(rng_state, fc, not deterministic)
    _launch(K.meta_dropout_double_backward_kernel, _grid(fc.numel()), *outs, *ins, fc, in_layout(a, fc), state, fc.numel(),
            seed, offset // 4, NOISY=not deterministic, ACC=_tl(_acc(fc.dtype)), HAS_STATE=has_state)
    return tuple(outs)


def philox4x32_10(counter, key):
    c, k = counter.contiguous(), key.contiguous()
    out = torch.empty_like(c)
    n = c.numel() // 4
    _launch(K.philox_kernel, (triton.cdiv(n, 1024),), out, c, k, n, BLOCK=1024)
    return out


def _register():
    impls = globals()
    for name in OP_NAMES:
        fn = impls[name]
        # CPU runs only under TRITON_INTERPRET=1; dropgrad_cuda.ops checks that before dispatching here.
        _lib.impl(name, fn, "CPU")
        _lib.impl(name, fn, "CUDA")
    _fakes.register(getattr(torch.ops, NAMESPACE), NAMESPACE)


_register()
