"""The noise contract and every op in plain PyTorch: the oracle of the tests (``backend="reference"``).

docs/noise_contract.md states the contract in prose; this module is its executable form and
mirrors csrc/dropgrad_math.h operation by operation (float32, fused multiply-adds where it has them), so the
kernels can be compared with it bit for bit. Autograd here is PyTorch's own.
"""
import torch
import torch.nn.functional as F

MODES = {"none": 0, "bernoulli": 1, "gaussian": 2, "normal": 3}


def noise_mode(mode, p):
    """The mode (a MODES code) a stream runs: "none" when p is 0, but "normal" (raw N(0,1)), which
    takes no p. The one test in Python of whether an op draws noise (C++'s: dg::noise_mode)."""
    return MODES["none"] if p == 0 and mode != MODES["normal"] else mode


_M32 = 0xFFFFFFFF


def _f32(x):
    return torch.tensor(x, dtype=torch.float32)


def _mulhilo(a, b):
    """(hi, lo) words of a * b for int64 tensors of 32-bit words a and a 32-bit constant b, without int64 overflow."""
    t = a * (b & 0xFFFF)
    u = a * (b >> 16)
    return (u + (t >> 16)) >> 16, (((u & 0xFFFF) << 16) + t) & _M32


def philox4x32_10(counter, key):
    """Philox4x32-10 as triton/language/random.py:philox_impl; int64 tensors holding 32-bit words."""
    c0, c1, c2, c3 = (counter[..., i] for i in range(4))
    k0, k1 = key[..., 0], key[..., 1]
    for _ in range(10):
        hb, lb = _mulhilo(c2, 0xCD9E8D57)
        ha, la = _mulhilo(c0, 0xD2511F53)
        c0, c1, c2, c3 = hb ^ c1 ^ k0, lb, ha ^ c3 ^ k1, la
        k0 = (k0 + 0x9E3779B9) & _M32
        k1 = (k1 + 0xBB67AE85) & _M32
    return torch.stack([c0, c1, c2, c3], dim=-1)


def words(numel, seed, offset=0, device=None):
    """The raw Philox words of stream elements [offset, offset + numel), as int64 in [0, 2^32)."""
    nq = (numel + 3) // 4
    q = torch.arange(nq, dtype=torch.int64, device=device) + offset // 4
    zero = torch.zeros_like(q)
    counter = torch.stack([q & _M32, q >> 32, zero, zero], dim=-1)
    seed %= 1 << 64
    key = torch.tensor([seed & _M32, seed >> 32], dtype=torch.int64, device=device).expand(nq, 2)
    return philox4x32_10(counter, key).reshape(-1)[:numel]


def uniform(w):
    """Triton's uint_to_uniform_float: the int32 view, bitwise-not if negative, times 4.6566127342e-10."""
    x = torch.where(w >= 1 << 31, w - (1 << 32), w)
    x = torch.where(x < 0, -x - 1, x)
    return x.to(torch.float32) * _f32(4.6566127342e-10)


def fma(a, b, c):
    """a * b + c in float32 rounded once (IEEE fusedMultiplyAdd, the contract's multiply-adds): the
    product is exact in float64, and the float64 sum rounded to odd (an inexact sum with an even
    last bit moves one ulp toward the exact value) rounds to float32 as the exact value would
    (Boldo and Melquiond, 2008). TwoSum gives the sum's error exactly."""
    a, b, c = (torch.as_tensor(t, dtype=torch.float32).double() for t in (a, b, c))
    p = a * b
    s = p + c
    bb = s - p
    err = (p - (s - bb)) + (c - bb)
    bits = s.view(torch.int64)
    toward = torch.where((err > 0) == (s > 0), 1, -1)
    bits = torch.where((err != 0) & ((bits & 1) == 0), bits + toward, bits)
    return bits.view(torch.float64).float()


def log_f(x):
    """Cephes logf, its polynomial by Horner's rule in FMAs (csrc/dropgrad_math.h:log_f), for
    positive normal float32 x."""
    b = x.view(torch.int32).to(torch.int64) & _M32
    e = (((b >> 23) & 0xFF) - 126).to(torch.float32)
    m = ((b & 0x807FFFFF) | 0x3F000000).to(torch.int32).view(torch.float32)
    small = m < _f32(0.707106781186547524)
    e = torch.where(small, e - 1, e)
    m = torch.where(small, (m + m) - 1, m - 1)
    z = m * m
    y = _f32(7.0376836292e-2)
    for coef in (-1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1, -1.6668057665e-1,
                 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1):
        y = fma(y, m, _f32(coef))
    y = (y * m) * z
    y = fma(e, _f32(-2.12194440e-4), y)
    y = fma(z, _f32(-0.5), y)
    return fma(e, _f32(0.693359375), m + y)


def box_muller_radius(w_even):
    """sqrt(-2 ln u), u = (w >> 9) 2^-23 + 2^-24 (exact, in [2^-24, 1 - 2^-24]) from the even word."""
    u = fma((w_even >> 9).to(torch.float32), _f32(2.0**-23), _f32(2.0**-24))
    # The correctly rounded float32 sqrt (torch's float32 CPU sqrt is not): double rounding is exact for sqrt.
    return torch.sqrt((log_f(u) * _f32(-2.0)).double()).float()


def box_muller_angle(w_odd):
    """x in [-pi/4, pi/4) from bits 6..29 of the odd word; the top two are the quadrant."""
    return fma(((w_odd >> 6) & 0xFFFFFF).to(torch.float32), _f32(1.57079632679489662 / 16777216.0),
               _f32(-0.785398163397448310))


def sincos_f(x, w_odd):
    """sin and cos of q pi/2 + x, q = w_odd >> 30: Cephes' polynomials for |x| <= pi/4 in FMAs, rotated
    by the quadrant (csrc/dropgrad_math.h:sincos_f)."""
    z = x * x
    ps = fma(fma(_f32(-1.9515295891e-4), z, _f32(8.3321608736e-3)), z, _f32(-1.6666654611e-1))
    sy = fma(x * z, ps, x)
    pc = fma(fma(_f32(2.443315711809948e-5), z, _f32(-1.388731625493765e-3)), z, _f32(4.166664568298827e-2))
    cy = fma(z * z, pc, fma(z, _f32(-0.5), _f32(1.0)))
    swap = ((w_odd >> 30) & 1) == 1
    sv, cv = torch.where(swap, cy, sy), torch.where(swap, sy, cy)
    s_neg, c_neg = ((w_odd >> 31) & 1) == 1, (((w_odd >> 31) ^ (w_odd >> 30)) & 1) == 1
    return torch.where(s_neg, -sv, sv), torch.where(c_neg, -cv, cv)


def box_muller(w_even, w_odd):
    r = box_muller_radius(w_even)
    s, c = sincos_f(box_muller_angle(w_odd), w_odd)
    return r * c, r * s


def noise(numel, p, mode, seed, offset=0, device=None):
    """The contract's float32 noise n of stream elements [offset, offset + numel).

    mode "bernoulli": 1/(1-p) where uniform > p, else 0; "gaussian": fma(sqrt(p/(1-p)), z, 1);
    "normal": z (the meta-dropout epsilon); "none" or p == 0 (except "normal"): ones.
    """
    if noise_mode(MODES[mode], p) == MODES["none"]:
        return torch.ones(numel, dtype=torch.float32, device=device)
    w = words(numel + (-numel) % 4, seed, offset, device).reshape(-1, 4)
    if mode == "bernoulli":
        n = torch.where(uniform(w) > _f32(p), _f32(1.0 / (1.0 - p)), _f32(0.0))
    else:
        z0, z1 = box_muller(w[:, 0], w[:, 1])
        z2, z3 = box_muller(w[:, 2], w[:, 3])
        n = torch.stack([z0, z1, z2, z3], dim=-1)
        if mode == "gaussian":
            n = fma(_f32((p / (1.0 - p)) ** 0.5), n, _f32(1.0))
    return n.reshape(-1)[:numel]


def _opmath(t):
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def empty_in_layout(first, dtype=None, contiguous=False):
    """An op's output for its first tensor (docs/noise_contract.md, memory layouts): the layout
    torch's preserve_format gives it (its own strides when dense, as channels_last is; else
    contiguous), or contiguous for a batch of lists. Kernels walk memory in order, so an element's
    noise follows its memory position in this layout. csrc/ops.h states the rule for C++."""
    dtype = first.dtype if dtype is None else dtype
    return torch.empty(first.shape, dtype=dtype, device=first.device) if contiguous else torch.empty_like(first, dtype=dtype)


def dense(t):
    """t's elements fill a block of memory without gaps or overlap (strides a permutation of a
    contiguous layout's, as channels_last's): torch's is_non_overlapping_and_dense."""
    expect = 1
    for size, stride in sorted(((sz, st) for sz, st in zip(t.shape, t.stride()) if sz != 1), key=lambda d: d[1]):
        if stride != expect:
            return t.numel() == 0
        expect *= size
    return True


def in_layout(x, out):
    """x read in out's layout: x itself when it has out's strides, else a copy."""
    return x if x.stride() == out.stride() else torch.empty_like(out, dtype=x.dtype).copy_(x)


def _noise_like(first, p, mode, seed, offset, dtype=None):
    """The noise of an op whose first tensor is `first`, in the op's output layout: the element at
    memory position k gets stream element offset + k."""
    out = empty_in_layout(first, _opmath(first) if dtype is None else dtype)
    out.as_strided((out.numel(),), (1,)).copy_(noise(out.numel(), p, mode, seed, offset, first.device))
    return out


def _laid_out(x, first):
    """A result in the layout of an op whose first tensor is `first`."""
    return in_layout(x, empty_in_layout(first, x.dtype))


def span(numel):
    """The stream length a tensor of numel elements takes: numel rounded up to a multiple of 4."""
    return -(-numel // 4) * 4


def stream_offsets(numels, offset=0):
    """Where each tensor's noise starts in a multi-tensor call: the previous end rounded up to 4."""
    out = []
    for n in numels:
        out.append(offset)
        offset += span(n)
    return out


def drop_grad(grad, p, mode="gaussian", *, seed, offset=0):
    """grad * n."""
    return _laid_out((grad.to(_opmath(grad)) * _noise_like(grad, p, mode, seed, offset)).to(grad.dtype), grad)


def dropgrad_update(param, grad, lr, p, mode="gaussian", *, seed, offset=0, weight_decay=0.0):
    """param - lr * ((grad + weight_decay * param) * n), lr a float, a 0-d tensor or a tensor of
    param's shape (weight_decay: the optimizer step's, dropgrad_step_)."""
    c = _opmath(param)
    lr = torch.as_tensor(lr, dtype=c, device=param.device) if not torch.is_tensor(lr) else lr.to(c)
    g = grad.to(c)
    if weight_decay != 0:
        g = g + torch.as_tensor(weight_decay, dtype=c) * param.to(c)
    if noise_mode(MODES[mode], p) != MODES["none"]:
        g = g * _noise_like(param, p, mode, seed, offset)
    return _laid_out((param.to(c) - lr * g).to(param.dtype), param)


def dropgrad_step(params, grads, lr, p, mode="gaussian", *, seed, offset=0, weight_decay=0.0):
    """dropgrad_update over a list; lr a float, one tensor, or a list with one entry per param."""
    lrs = lr if isinstance(lr, (list, tuple)) else [lr] * len(params)
    return [
        dropgrad_update(w, g, l, p, mode, seed=seed, offset=o, weight_decay=weight_decay)
        for w, g, l, o in zip(params, grads, lrs, stream_offsets([w.numel() for w in params], offset))
    ]


def dropgrad_step_(params, grads, lr, p, mode="gaussian", *, seed, offset=0, weight_decay=0.0):
    """dropgrad_step written into the params: params -= lr * ((grads + weight_decay * params) * n)."""
    with torch.no_grad():
        for w, new in zip(params, dropgrad_step(params, grads, lr, p, mode, seed=seed, offset=offset,
                                                weight_decay=weight_decay)):
            w.copy_(new)


def meta_dropout(f, a, *, deterministic=False, seed, offset=0):
    """f * softplus(a + eps), eps ~ N(0, 1) from the stream; f * softplus(a) when deterministic."""
    c = _opmath(f)
    z = a.to(c)
    if not deterministic:
        z = z + _noise_like(f, 0.0, "normal", seed, offset)
    return _laid_out((f.to(c) * F.softplus(z)).to(f.dtype), f)


def meta_dropout_double_backward_terms(grad_grad_f, grad_grad_a, grad_out, f, a, *, deterministic=False, seed,
                                      offset=0):
    """The summands of each output of meta_dropout_double_backward, in the compute type. Where the
    summands of an output have opposite signs the sum cancels; the tests bound its error by their
    magnitudes, not the result's."""
    c = _opmath(f)
    z = a.to(c)
    if not deterministic:
        z = z + _noise_like(f, 0.0, "normal", seed, offset)
    ggf, gga, g, fc = (t.to(c) for t in (grad_grad_f, grad_grad_a, grad_out, f))
    e = torch.exp(-z.abs())
    s = torch.where(z > 20, 1.0, torch.sigmoid(z))
    ds = torch.where(z > 20, 0.0, e / ((1 + e) * (1 + e)))
    return (ggf * F.softplus(z), (gga * fc) * s), ((gga * g) * s,), ((ggf * g) * s, ((gga * g) * fc) * ds)


def meta_dropout_double_backward(grad_grad_f, grad_grad_a, grad_out, f, a, *, deterministic=False, seed, offset=0):
    """The derivative of meta_dropout's backward (gf = grad_out * softplus(z), ga = grad_out * f *
    softplus'(z)) along (grad_grad_f, grad_grad_a): (d grad_out, d f, d a), with softplus''(z) =
    e / (1 + e)^2, e = exp(-|z|) (no cancellation), 0 above the threshold 20 as softplus'."""
    terms = meta_dropout_double_backward_terms(grad_grad_f, grad_grad_a, grad_out, f, a, deterministic=deterministic,
                                               seed=seed, offset=offset)
    return tuple(_laid_out((t[0] if len(t) == 1 else t[0] + t[1]).to(f.dtype), f) for t in terms)


def logit_noise(mu, s, *, deterministic=False, seed, offset=0):
    """mu + softplus(s) * eps, eps ~ N(0, 1) from the stream, s broadcast to mu (one scale per example)."""
    if deterministic:
        return mu
    c = _opmath(mu)
    scale = F.softplus(s).to(c).expand(mu.shape)  # softplus in s's dtype, as the fused op feeds its kernel
    return _laid_out((mu.to(c) + scale * _noise_like(mu, 0.0, "normal", seed, offset)).to(mu.dtype), mu)


def meta_dropout_backward(grad_out, f, a, *, deterministic=False, seed, offset=0):
    """meta_dropout's gradients: (grad_out * softplus(z), grad_out * f * softplus'(z)), softplus'
    = sigmoid below PyTorch's threshold 20 and 1 above it."""
    c = _opmath(f)
    z = a.to(c)
    if not deterministic:
        z = z + _noise_like(f, 0.0, "normal", seed, offset)
    g, fc = grad_out.to(c), f.to(c)
    s = torch.where(z > 20, 1.0, torch.sigmoid(z))
    return _laid_out((g * F.softplus(z)).to(f.dtype), f), _laid_out(((g * fc) * s).to(f.dtype), f)
