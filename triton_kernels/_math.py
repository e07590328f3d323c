"""The per-element math of the noise contract in Triton: csrc/dropgrad_math.h operation by
operation (same constants, same order, FMAs where it has them), so the interpreter matches the
reference bit for bit and GPU builds launched with enable_fp_fusion=False do too."""
import os

import triton
import triton.language as tl

# Decided at import, as triton.jit decides whether to interpret.
INTERPRET = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")


@triton.jit
def uniform(w):
    return tl.random.uint_to_uniform_float(w)


@triton.jit
def fma(a, b, c):
    """a * b + c in float32 rounded once (the contract's multiply-adds, reference.fma): tl.fma on a
    GPU; the interpreter's own rounds the product, so there the reference's exact float64 form."""
    if INTERPRET:  # a is a float32 tensor; b and c may be Python floats, which `+ zero` rounds to float32
        zero = a * 0.0
        c64 = (c + zero).to(tl.float64)
        p = a.to(tl.float64) * (b + zero).to(tl.float64)
        s = p + c64
        bb = s - p
        err = (p - (s - bb)) + (c64 - bb)
        bits = s.to(tl.int64, bitcast=True)
        toward = tl.where((err > 0.0) == (s > 0.0), 1, -1).to(tl.int64)
        bits = tl.where((err != 0.0) & ((bits & 1) == 0), bits + toward, bits)
        return bits.to(tl.float64, bitcast=True).to(tl.float32)
    else:
        return tl.fma(a, b, c)


@triton.jit
def log_f(x):
    b = x.to(tl.uint32, bitcast=True)
    e = (((b >> 23) & 0xFF).to(tl.int32) - 126).to(tl.float32)
    m = ((b & 0x807FFFFF) | 0x3F000000).to(tl.float32, bitcast=True)
    small = m < 0.707106781186547524
    e = e - tl.where(small, 1.0, 0.0)
    m = tl.where(small, m + m, m) - 1.0
    z = m * m
    y = fma(m, 7.0376836292e-2, -1.1514610310e-1)
    y = fma(y, m, 1.1676998740e-1)
    y = fma(y, m, -1.2420140846e-1)
    y = fma(y, m, 1.4249322787e-1)
    y = fma(y, m, -1.6668057665e-1)
    y = fma(y, m, 2.0000714765e-1)
    y = fma(y, m, -2.4999993993e-1)
    y = fma(y, m, 3.3333331174e-1)
    y = (y * m) * z
    y = fma(e, -2.12194440e-4, y)
    y = fma(z, -0.5, y)
    return fma(e, 0.693359375, m + y)


@triton.jit
def sincos_f(x, w_odd):
    z = x * x
    ps = fma(fma(z, -1.9515295891e-4, 8.3321608736e-3), z, -1.6666654611e-1)
    sy = fma(x * z, ps, x)
    pc = fma(fma(z, 2.443315711809948e-5, -1.388731625493765e-3), z, 4.166664568298827e-2)
    cy = fma(z * z, pc, fma(z, -0.5, 1.0))
    swap = ((w_odd >> 30) & 1) == 1
    sv = tl.where(swap, cy, sy)
    cv = tl.where(swap, sy, cy)
    s = (sv.to(tl.uint32, bitcast=True) ^ (w_odd & 0x80000000)).to(tl.float32, bitcast=True)
    c = (cv.to(tl.uint32, bitcast=True) ^ ((w_odd ^ (w_odd << 1)) & 0x80000000)).to(tl.float32, bitcast=True)
    return s, c


@triton.jit
def box_muller(w_even, w_odd):
    u = fma((w_even >> 9).to(tl.int32).to(tl.float32), 1.1920928955078125e-07, 5.9604644775390625e-08)
    r = tl.sqrt_rn(log_f(u) * -2.0)
    x = fma(((w_odd >> 6) & 0xFFFFFF).to(tl.int32).to(tl.float32), 9.362675967850009e-08, -0.785398163397448310)
    s, c = sincos_f(x, w_odd)
    return r * c, r * s


@triton.jit
def _mulhilo(a: tl.constexpr, b):
    """The high and low words of a * b (32-bit words) from one 64-bit product: one wide multiply
    on the GPU (IMAD.WIDE.U32), where tl.random's umulhi and mul take two."""
    prod = b.to(tl.uint64) * a
    return (prod >> 32).to(tl.uint32), prod.to(tl.uint32)


@triton.jit
def philox(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 of triton/language/random.py (philox_impl) on 32-bit words, its products
    spelled as 64-bit ones: the same words."""
    for _ in tl.static_range(10):
        hi_b, lo_b = _mulhilo(0xCD9E8D57, c2)
        hi_a, lo_a = _mulhilo(0xD2511F53, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 += 0x9E3779B9
        k1 += 0xBB67AE85
    return c0, c1, c2, c3


@triton.jit
def tile4(n0, n1, n2, n3):
    """(R,) x 4 -> (R, 4): word i of counter r becomes element 4r + i."""
    col = tl.arange(0, 4)[None, :]
    return tl.where(col == 0, n0[:, None], tl.where(col == 1, n1[:, None], tl.where(col == 2, n2[:, None], n3[:, None])))


@triton.jit
def noise_tile(seed, q, p, scale, sigma, MODE: tl.constexpr):
    """float32 noise (R, 4) of the Philox counters q (int64, (R,)); MODE as csrc/dropgrad_math.h."""
    zero = tl.zeros(q.shape, tl.uint32)
    # Counter (q lo, q hi, 0, 0) with 32-bit words: an int64 offset in tl.randint4x could switch
    # Triton to Philox4x64, which the contract does not use.
    key = tl.core.to_tensor(seed).to(tl.uint64)  # a small seed comes as an int32 (Triton 3.6 has no tl.to_tensor)
    c0, c1, c2, c3 = philox((q & 0xFFFFFFFF).to(tl.uint32), (q >> 32).to(tl.uint32), zero, zero,
                            (key & 0xFFFFFFFF).to(tl.uint32), (key >> 32).to(tl.uint32))
    if MODE == 1:
        n = tile4(tl.where(uniform(c0) > p, scale, 0.0), tl.where(uniform(c1) > p, scale, 0.0),
                  tl.where(uniform(c2) > p, scale, 0.0), tl.where(uniform(c3) > p, scale, 0.0))
    else:
        z0, z1 = box_muller(c0, c1)
        z2, z3 = box_muller(c2, c3)
        n = tile4(z0, z1, z2, z3)
        if MODE == 2:
            n = fma(n, sigma, 1.0)
    return n


@triton.jit
def exp_f(x0):
    """exp(x0) for x0 <= 0 (csrc/dropgrad_math.h:exp_f)."""
    x1 = tl.where(x0 < -87.3, -87.3, x0)
    n = fma(x1, 1.44269504088896341, 12582912.0) - 12582912.0
    i = n.to(tl.int32)
    x = fma(n, -0.693359375, x1)
    x = fma(n, 2.12194440e-4, x)
    z = x * x
    y = fma(x, 1.9875691500e-4, 1.3981999507e-3)
    y = fma(y, x, 8.3334519073e-3)
    y = fma(y, x, 4.1665795894e-2)
    y = fma(y, x, 1.6666665459e-1)
    y = fma(y, x, 5.0000001201e-1)
    y = fma(y, z, x) + 1.0
    y = y * ((i + 127).to(tl.uint32) << 23).to(tl.float32, bitcast=True)
    return tl.where(x0 < -87.3, 0.0, y)


@triton.jit
def log1p_f(e, base):
    """base + log(1 + e), e in [0, 1] (csrc/dropgrad_math.h:log1p_f)."""
    y = fma(e, -0.004518846981227398, 0.02543756738305092)
    y = fma(y, e, -0.06711038947105408)
    y = fma(y, e, 0.11592266708612442)
    y = fma(y, e, -0.15862157940864563)
    y = fma(y, e, 0.19857926666736603)
    y = fma(y, e, -0.2498702108860016)
    y = fma(y, e, 0.3333286643028259)
    y = fma(y, e, -0.4999999701976776)
    return fma(e, fma(y, e, 1.0), base)


@triton.jit
def softplus(z):
    """PyTorch's softplus (threshold 20): the float32 polynomials, or exp/log in float64."""
    if z.dtype == tl.float64:
        t = tl.exp(z)
        u = 1.0 + t
        d = u - 1.0
        # log1p by Goldberg's correction, exact for tiny t (float64 division is IEEE on every target)
        r = tl.where(d == 0.0, t, tl.log(u) * (t / tl.where(d == 0.0, 1.0, d)))
        return tl.where(z > 20.0, z, r)
    else:
        r = log1p_f(exp_f(-tl.abs(z)), tl.where(z > 0.0, z, 0.0))
        return tl.where(z > 20.0, z, r)


@triton.jit
def softplus_grad(z):
    if z.dtype == tl.float64:
        r = 1.0 / (1.0 + tl.exp(-z))
    else:  # sigmoid from e = exp(-|z|), as csrc/dropgrad_math.h:softplus_grad_from_exp
        e = exp_f(-tl.abs(z))
        r = tl.div_rn(tl.where(z < 0.0, e, 1.0), 1.0 + e)
    return tl.where(z > 20.0, 1.0, r)


@triton.jit
def softplus_grad2(z):
    """softplus''(z) = e / (1 + e)^2, e = exp(-|z|); 0 above 20 (csrc/dropgrad_math.h:softplus_grad2_from_exp)."""
    if z.dtype == tl.float64:
        e = tl.exp(-tl.abs(z))
        r = e / ((1.0 + e) * (1.0 + e))
    else:
        e = exp_f(-tl.abs(z))
        r = tl.div_rn(e, (1.0 + e) * (1.0 + e))
    return tl.where(z > 20.0, 0.0, r)


@triton.jit
def cast_out(x, DT: tl.constexpr):
    """x (float32/float64) in the output dtype, rounded to nearest even. bfloat16 is rounded by
    hand, as c10::BFloat16 does: Triton's interpreter truncates it, the GPU rounds; this agrees on both."""
    if DT == tl.bfloat16:
        b = x.to(tl.float32).to(tl.uint32, bitcast=True)
        r = (b + 0x7FFF + ((b >> 16) & 1)) >> 16
        r = tl.where(x != x, 0x7FC0, r)
        return r.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(DT)
