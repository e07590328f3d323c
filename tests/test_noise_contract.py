"""Every backend's noise against the contract's reference (docs/noise_contract.md)."""
import os

import pytest
import torch
import triton
import triton.language as tl

import dropgrad_cuda as dg
from dropgrad_cuda import reference as R
from dropgrad_cuda.triton_kernels import _math

SEEDS = [0, 1, 2**32 + 7, 2**63 + 12345, 2**64 - 1]
OFFSETS = [0, 4, 2**32 - 4, 2**34 + 8]
SIZES = [1, 3, 4, 5, 1023, 4097]
# GPU rows get this bound on their Gaussian noise, in float32 ulps of the Box-Muller radius, until
# a GPU has run them: their builds turn FMA contraction off (--fmad=false, enable_fp_fusion=False),
# take the contract's FMAs as FFMAs and use the CPU's polynomials, so they are expected to be exact. CPU backends must be exact.
GAUSS_ULPS_GPU = 4


def kernel_noise(backend, numel, p, mode, seed, offset):
    name, device = backend
    ns = dg.ops._kernels(name, torch.device(device))
    return ns.noise(torch.empty(numel, device=device), p, R.MODES[mode], dg.ops._seed(seed), offset).cpu()


def assert_noise_close(got, want, device):
    if device == "cpu":
        assert torch.equal(got, want)
    else:
        bound = GAUSS_ULPS_GPU * 2.0**-23 * want.abs().clamp_min(1.0)
        assert ((got - want).abs() <= bound).all()


def test_philox_known_answer():
    # Random123's published known-answer vectors for Philox4x32-10.
    ctr = torch.tensor([[0, 0, 0, 0], [0xFFFFFFFF] * 4, [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344]])
    key = torch.tensor([[0, 0], [0xFFFFFFFF] * 2, [0xA4093822, 0x299F31D0]])
    want = torch.tensor([[0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8],
                         [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD],
                         [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]])
    assert torch.equal(R.philox4x32_10(ctr, key), want)
    assert torch.equal(dg.philox4x32_10(ctr, key), want)


def test_philox_raw_words(backend):
    name, device = backend
    g = torch.Generator().manual_seed(0)
    ctr = torch.randint(0, 2**32, (1001, 4), generator=g)
    key = torch.randint(0, 2**32, (1001, 2), generator=g)
    got = dg.philox4x32_10(ctr.to(device), key.to(device), backend=name).cpu()
    assert torch.equal(got, R.philox4x32_10(ctr, key))


def test_stream_layout_matches_triton_counters():
    # Element i of a stream at offset o uses counter (o + i) // 4 as (lo, hi, 0, 0), word (o + i) % 4.
    seed, offset = 2**40 + 3, 2**33 + 4
    w = R.words(12, seed, offset)
    q = offset // 4 + 2
    c = torch.tensor([[q & 0xFFFFFFFF, q >> 32, 0, 0]])
    k = torch.tensor([[seed & 0xFFFFFFFF, seed >> 32]])
    assert torch.equal(w[8:12], R.philox4x32_10(c, k)[0])


@pytest.mark.parametrize("mode", ["bernoulli", "gaussian", "normal"])
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("offset", OFFSETS)
def test_noise_matches_reference(backend, mode, seed, offset):
    for n in SIZES:
        got = kernel_noise(backend, n, 0.15, mode, seed, offset)
        want = R.noise(n, 0.15, mode, seed, offset)
        if mode == "bernoulli":
            assert torch.equal(got, want)
        else:
            assert_noise_close(got, want, backend[1])


def test_noise_is_a_prefix_of_longer_streams():
    # The same element gets the same noise whatever the tensor's length: no size dependence.
    long = R.noise(1000, 0.2, "gaussian", 9)
    for n in (1, 7, 999):
        assert torch.equal(R.noise(n, 0.2, "gaussian", 9), long[:n])
    assert torch.equal(R.noise(96, 0.2, "gaussian", 9, offset=904), long[904:])


def _fma_cases():
    """float32 (a, b, c) where rounding a*b + c twice goes wrong: a*b exactly halfway between two
    float32 values and c a nudge below float64's resolution there (a float64 sum drops it, and
    rounding the tie to even then goes the wrong way), besides cancellations and random ones."""
    g = torch.Generator().manual_seed(0)
    k = torch.randint(1, 2048, (512,), generator=g).double()
    a = 1 + k * 2.0**-12
    nudge = torch.where(torch.rand(512, generator=g) < 0.5, 1.0, -1.0) * 2.0**-70
    half = torch.stack([a, a, nudge], dim=1)  # a^2 = 1 + k 2^-11 + k^2 2^-24: a tie for odd k^2
    x = torch.randn(2048, 2, generator=g).float().double()
    near = -(x[:, :1] * x[:, 1:]).float().double() * (1 + 2.0**-20 * torch.randn(2048, 1, generator=g))
    cancel = torch.cat([x, near], 1)
    rand = torch.randn(2048, 3, generator=g) * torch.tensor([1.0, 1e3, 1e-2])
    return torch.cat([half, cancel, rand.double()]).float()


def _assert_correctly_rounded(a, b, c, r):
    """r is a*b + c rounded to nearest even float32, checked in exact rational arithmetic."""
    import numpy as np
    from fractions import Fraction

    for ai, bi, ci, ri in zip(a.tolist(), b.tolist(), c.tolist(), r.tolist()):
        exact = Fraction(ai) * Fraction(bi) + Fraction(ci)
        lo, hi = (float(np.nextafter(np.float32(ri), np.float32(d))) for d in (-np.inf, np.inf))
        err = abs(exact - Fraction(ri))
        assert err <= abs(exact - Fraction(lo)) and err <= abs(exact - Fraction(hi)), (ai, bi, ci, ri)
        if err in (abs(exact - Fraction(lo)), abs(exact - Fraction(hi))):  # a tie: the even one
            assert np.float32(ri).view(np.int32) % 2 == 0, (ai, bi, ci, ri)


def test_reference_fma_is_correctly_rounded():
    abc = _fma_cases()
    r = R.fma(abc[:, 0], abc[:, 1], abc[:, 2])
    _assert_correctly_rounded(abc[:, 0], abc[:, 1], abc[:, 2], r)
    # The halfway cases are not vacuous: rounding the float64 sum would get some of them wrong.
    a, b, c = (abc[:512, i].double() for i in range(3))
    assert not torch.equal((a * b + c).float(), r[:512])


@triton.jit
def _fma_kernel(a_ptr, b_ptr, c_ptr, out_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    tl.store(out_ptr + i, _math.fma(tl.load(a_ptr + i, m), tl.load(b_ptr + i, m), tl.load(c_ptr + i, m)), m)


@pytest.mark.parametrize("device", [
    pytest.param("cpu", id="interpreter", marks=pytest.mark.skipif(
        os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1")),
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                     reason="needs a CUDA GPU")])])
def test_triton_fma_matches_reference(device):
    """The Triton kernels' fma (the interpreter's own rounds the product first) against the
    reference's; the C++ kernels take the hardware's FMA or libm's fmaf."""
    abc = _fma_cases().to(device)
    out = torch.empty(abc.shape[0], device=device)
    a, b, c = (abc[:, i].contiguous() for i in range(3))
    _fma_kernel[(triton.cdiv(out.numel(), 1024),)](a, b, c, out, out.numel(), BLOCK=1024)
    assert torch.equal(out.cpu(), R.fma(a.cpu(), b.cpu(), c.cpu()))


def test_uniform_range_and_box_muller_accuracy():
    u = R.uniform(R.words(1 << 20, 3))
    assert u.min() >= 0 and u.max() < 1
    x = torch.rand(1 << 18, dtype=torch.float64).float() * 0.999 + 1e-7
    # The contract's polynomials stay within 2 ulps of the correctly rounded functions.
    ulp_log = (R.log_f(x).double() - x.double().log()).abs() / (x.double().log().abs() * 2.0**-23)
    assert ulp_log.max() < 2
    # The angle q pi/2 + x of every word pattern's quadrant and a spread of positions x.
    w = R.words(1 << 18, 5)
    x = R.box_muller_angle(w)
    assert x.min() >= -0.7853982 and x.max() < 0.7853982
    s, c = R.sincos_f(x, w)
    theta = (w >> 30).double() * (torch.pi / 2) + x.double()
    assert (s.double() - theta.sin()).abs().max() < 2 * 2.0**-24
    assert (c.double() - theta.cos()).abs().max() < 2 * 2.0**-24
    # The radius' uniform is exact and never 0 or 1.
    r = R.box_muller_radius(torch.tensor([0, 2**32 - 1]))
    exact = (-2 * torch.log(torch.tensor([2.0**-24, 1 - 2.0**-24], dtype=torch.float64))).sqrt()
    assert torch.equal(r, exact.float())


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_noise_statistics(p):
    """Keep rate 1-p and mean 1 for Bernoulli; mean 1, variance p/(1-p) for Gaussian; N(0,1) eps.

    On the CPU kernels: every other backend is tested bit-exact (or within GAUSS_ULPS_GPU) against
    the same reference, so it inherits these statistics without 2**20 samples through Triton's
    interpreter. n = 2**20: bounds are 5 standard errors."""
    backend = ("cpu", "cpu")
    n = 1 << 20
    b = kernel_noise(backend, n, p, "bernoulli", 11, 0).double()
    keep = (b > 0).double().mean()
    assert abs(keep - (1 - p)) < 5 * (p * (1 - p) / n) ** 0.5
    assert abs(b.mean() - 1) < 5 * (p / (1 - p) / n) ** 0.5
    assert torch.all((b == 0) | (b == torch.tensor(1 / (1 - p), dtype=torch.float32).double()))
    g = kernel_noise(backend, n, p, "gaussian", 12, 0).double()
    var = p / (1 - p)
    assert abs(g.mean() - 1) < 5 * (var / n) ** 0.5
    assert abs(g.var() / var - 1) < 5 * (2 / n) ** 0.5
    z = kernel_noise(backend, n, p, "normal", 13, 0).double()
    assert abs(z.mean()) < 5e-3 and abs(z.var() - 1) < 5 * (2 / n) ** 0.5
    # Tails: P(|z| > 3) = 0.0027; the radius' smallest uniform, 2^-24, caps |z| at sqrt(48 ln 2) = 5.77.
    assert abs((z.abs() > 3).double().mean() - 0.0027) < 5 * (0.0027 / n) ** 0.5
    assert z.abs().max() <= 5.77


def test_distinct_seeds_and_offsets_give_independent_noise():
    a = R.noise(1 << 16, 0.0, "normal", 1)
    b = R.noise(1 << 16, 0.0, "normal", 2)
    c = R.noise(1 << 16, 0.0, "normal", 1, offset=1 << 16)
    for x, y in ((a, b), (a, c)):
        assert abs(torch.corrcoef(torch.stack([x, y]))[0, 1]) < 0.02  # 5 sigma of 1/sqrt(2**16)


def test_seed_none_follows_torch_manual_seed():
    g = torch.randn(1000)
    torch.manual_seed(5)
    a = dg.drop_grad(g, 0.2)
    torch.manual_seed(5)
    b = dg.drop_grad(g, 0.2)
    c = dg.drop_grad(g, 0.2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_seed_none_draws_what_torch_randint_draws():
    """seed=None takes one number from torch's default generator, drawn in C (no tensor, nothing a
    torch.func transform batches): the number torch.randint(0, 2**63 - 1, ()) would give, so
    torch.manual_seed reproduces a run as before."""
    from dropgrad_cuda import _C
    for s in (0, 7, 2**40):
        torch.manual_seed(s)
        ours = [_C.draw_seed() for _ in range(4)]
        torch.manual_seed(s)
        assert ours == [int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64)) for _ in range(4)]
