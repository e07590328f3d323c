"""Each op of each backend against the reference, over dtypes, shapes, layouts and lr forms.

Tolerances: DropGrad ops are exact on every CPU backend (the same float32/float64 operations in
the same order, FMAs only where the contract has them). The GPU builds turn contraction off too
(--fmad=false, enable_fp_fusion=False) and use the same polynomials, so they should be exact as well; until a GPU
has shown it, GPU rows get 2 ulps of the output dtype. meta_dropout's reference computes softplus
with ATen's exp/log1p (and float64 kernels call libm, or numpy under Triton's interpreter), whose
last bits depend on the library and its SIMD path: 4 ulps, and where a result is a sum of terms,
a bound from the terms' magnitudes (assert_within_summands)."""
import os

import pytest
import torch

import dropgrad_cuda as dg
from dropgrad_cuda import reference as R

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
EPS = {torch.float32: 2.0**-23, torch.float64: 2.0**-52, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}
MODES = ["gaussian", "bernoulli", "none"]


def make(shape, dtype, device, seed=0, noncontiguous=False):
    g = torch.Generator().manual_seed(seed)
    if noncontiguous:  # a transposed view: dense, so the stream follows its memory order (noise contract)
        t = torch.randn(*reversed(shape), generator=g, dtype=torch.float64).to(dtype).t()
    else:
        t = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
    return t.to(device)


def assert_matches(got, want, backend, ulps=2):
    got = got.cpu()
    assert got.dtype == want.dtype and got.shape == want.shape
    if backend[1] == "cpu" and ulps == 2:  # every CPU backend: the same operations, exact
        assert torch.equal(got, want)
    else:
        tol = ulps * EPS[want.dtype]
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(0,), (1,), (7, 3), (33, 65)])
def test_drop_grad(backend, dtype, mode, shape):
    name, device = backend
    for nc in (False, True) if len(shape) == 2 else (False,):
        g = make(shape, dtype, device, 1, nc)
        got = dg.drop_grad(g, 0.2, mode, seed=2**33 + 1, offset=8, backend=name)
        want = R.drop_grad(g.cpu(), 0.2, mode, seed=2**33 + 1, offset=8)
        assert_matches(got, want, backend)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("lr_form", ["float", "0d", "full"])
def test_dropgrad_update(backend, dtype, mode, lr_form):
    name, device = backend
    for shape, nc in (((0,), False), ((5,), False), ((31, 17), False), ((31, 17), True)):
        w, g = make(shape, dtype, device, 1, nc), make(shape, dtype, device, 2, nc)
        lr = {"float": 0.05, "0d": torch.tensor(0.05, device=device),
              "full": make(shape, dtype, device, 3).abs()}[lr_form]
        got = dg.dropgrad_update(w, g, lr, 0.1, mode, seed=77, backend=name)
        lr_ref = lr.cpu() if torch.is_tensor(lr) else lr
        want = R.dropgrad_update(w.cpu(), g.cpu(), lr_ref, 0.1, mode, seed=77)
        assert_matches(got, want, backend)


def test_update_without_noise_is_the_plain_formula(backend):
    # Exactly param - lr * grad, with no RNG. (Not bit-equal to torch.add(alpha=-lr), whose
    # vectorized CPU kernel fuses the multiply-add; the result differs in the last bit.)
    name, device = backend
    for dtype in DTYPES:
        w, g = make((1000,), dtype, device, 1), make((1000,), dtype, device, 2)
        c = torch.float64 if dtype == torch.float64 else torch.float32
        want = (w.to(c) - torch.tensor(0.01, dtype=c, device=device) * g.to(c)).to(dtype)
        for kw in ({"p": 0.3, "mode": "none"}, {"p": 0.0, "mode": "gaussian"}, {"p": 0.0, "mode": "bernoulli"}):
            torch.testing.assert_close(dg.dropgrad_update(w, g, 0.01, backend=name, **kw), want, rtol=0, atol=0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("lr_form", ["float", "shared0d", "list"])
def test_dropgrad_step_equals_updates_on_consecutive_streams(backend, mode, lr_form):
    name, device = backend
    shapes = [(3, 3), (1,), (0,), (64, 5), (2, 3, 5), (4097,)]
    dtypes = [torch.float32, torch.float64, torch.bfloat16, torch.float32, torch.float16, torch.float32]
    ws = [make(s, d, device, i) for i, (s, d) in enumerate(zip(shapes, dtypes))]
    gs = [make(s, d, device, 10 + i, noncontiguous=len(s) == 2) for i, (s, d) in enumerate(zip(shapes, dtypes))]
    lr = {"float": 0.1, "shared0d": torch.tensor(0.1, device=device),
          "list": [torch.tensor(0.1 * (i + 1), device=device) if i % 2 else make(s, d, device, 20 + i).abs()
                   for i, (s, d) in enumerate(zip(shapes, dtypes))]}[lr_form]
    out = dg.dropgrad_step(ws, gs, lr, 0.15, mode, seed=5, offset=2**32, backend=name)
    offsets = R.stream_offsets([w.numel() for w in ws], 2**32)
    assert offsets[:3] == [2**32, 2**32 + 12, 2**32 + 16]
    for i, (o, w, g, off) in enumerate(zip(out, ws, gs, offsets)):
        l = lr[i] if isinstance(lr, list) else lr
        want = R.dropgrad_update(w.cpu(), g.cpu(), l.cpu() if torch.is_tensor(l) else l, 0.15, mode, seed=5, offset=off)
        assert_matches(o, want, backend)
        single = dg.dropgrad_update(w, g, l, 0.15, mode, seed=5, offset=off, backend=name)
        assert torch.equal(o.cpu(), single.cpu())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("weight_decay", [0.0, 5e-4])
@pytest.mark.parametrize("lr_form", ["float", "list"])
def test_dropgrad_step_in_place(backend, mode, weight_decay, lr_form):
    """params -= lr * ((grads + weight_decay * params) * n) in place, on dropgrad_step's streams:
    every dtype in one list, a transposed param (stepped where it lies), a grad that is its param."""
    name, device = backend
    shapes = [(3, 3), (1,), (0,), (64, 5), (2, 3, 5), (4097,)]
    dtypes = [torch.float32, torch.float64, torch.bfloat16, torch.float32, torch.float16, torch.float32]
    ws = [make(s, d, device, i, noncontiguous=i == 3) for i, (s, d) in enumerate(zip(shapes, dtypes))]
    gs = [make(s, d, device, 10 + i, noncontiguous=i == 0) for i, (s, d) in enumerate(zip(shapes, dtypes))]
    gs[1] = ws[1]
    lr = 0.1 if lr_form == "float" else [make(s, d, device, 20 + i).abs() for i, (s, d) in enumerate(zip(shapes, dtypes))]
    want = [w.cpu().clone() for w in ws]
    R.dropgrad_step_(want, [g.cpu() for g in gs], lr if lr_form == "float" else [l.cpu() for l in lr], 0.15, mode,
                     seed=5, offset=2**32, weight_decay=weight_decay)
    if weight_decay == 0:
        new = dg.dropgrad_step(ws, gs, lr, 0.15, mode, seed=5, offset=2**32, backend=name)
    ptrs, versions = [w.data_ptr() for w in ws], [w._version for w in ws]
    dg.dropgrad_step_(ws, gs, lr, 0.15, mode, weight_decay=weight_decay, seed=5, offset=2**32, backend=name)
    for i, (w, v) in enumerate(zip(ws, want)):
        assert w.data_ptr() == ptrs[i] and w._version > versions[i]
        assert_matches(w, v, backend)
        if weight_decay == 0:
            assert torch.equal(w, new[i])


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropgrad_step_on_views_at_every_alignment(backend, dtype):
    """Params, grads and full lrs that start 0-3 elements into their buffers, 4097 elements (whole
    tiles and a partial one): the kernels' vector paths take the aligned ones, element paths the rest."""
    name, device = backend

    def view(seed, start):
        return make((4097 + start,), dtype, device, seed)[start:]

    ws, gs, lrs = ([view(10 * k + i, i) for i in range(4)] for k in range(3))
    lrs = [l.abs() for l in lrs]
    out = dg.dropgrad_step(ws, gs, lrs, 0.15, "gaussian", seed=9, offset=4, backend=name)
    for o, w, g, l, off in zip(out, ws, gs, lrs, R.stream_offsets([4097] * 4, 4)):
        want = R.dropgrad_update(w.cpu(), g.cpu(), l.cpu(), 0.15, "gaussian", seed=9, offset=off)
        assert_matches(o, want, backend)
    dg.dropgrad_step_(ws, gs, lrs, 0.15, "gaussian", seed=9, offset=4, backend=name)
    for w, o in zip(ws, out):
        assert torch.equal(w, o)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1")
def test_triton_step_table_marks_the_aligned_rows(monkeypatch):
    """The Triton step kernel reads pointers from its table, where the launcher cannot see their
    alignment: the host's `aligned` column is what lets the kernel use 16-byte vectors, so it must
    be 1 only where every pointer of the row is 16-byte aligned."""
    from dropgrad_cuda.triton_kernels import kernels as K, ops as triton_ops

    tables = []
    launch = triton_ops._launch

    def spy(kernel, grid, *args, **meta):
        if kernel is K.step_kernel:
            tables.append(args[0].clone())
        launch(kernel, grid, *args, **meta)

    monkeypatch.setattr(triton_ops, "_launch", spy)
    base, grads = torch.randn(3 * 4104), [torch.randn(4097), torch.randn(4097)]
    # A param 4 bytes past a 16-byte boundary; then aligned params with a full lr that is not.
    dg.dropgrad_step([base[:4097], base[4104 + 1:4104 + 4098]], grads, 0.1, 0.15, seed=1, backend="triton")
    dg.dropgrad_step([base[:4097], base[4104:8201]], grads, [torch.ones(4097), torch.ones(4098)[1:]], 0.15, seed=1,
                     backend="triton")
    aligned = K.TABLE_COLUMNS.index("aligned")
    assert [t[:, aligned].tolist() for t in tables] == [[1, 0], [1, 0]]
    assert tables[0][1, K.TABLE_COLUMNS.index("param")] % 16 == 4
    assert tables[1][1, K.TABLE_COLUMNS.index("lr")] % 16 == 4


@pytest.mark.parametrize("which", ["kernel", "reference"])
def test_dropgrad_step_in_place_refuses_overlapping_params(backend, which):
    """A tensor listed twice, overlapping views and an expanded view are refused on every backend,
    before anything is written (main: the CPU applied both updates, the reference kept the later
    write, the emulated CUDA kernels neither, and parallel threads raced)."""
    name = backend[0] if which == "kernel" else "reference"
    device = backend[1]
    base = make((10,), torch.float32, device, 1)
    w, other = make((6,), torch.float32, device, 2), make((3,), torch.float32, device, 3)
    before = base.clone(), w.clone()
    cases = [([w, other, w], r"params\[2\] overlaps params\[0\]"),
             ([base[0:6], base[4:10]], r"params\[1\] overlaps params\[0\]"),
             ([base[4:10], other, base[0:6]], r"params\[2\] overlaps params\[0\]"),
             ([base.view(2, 5)[:, 1:3], base.view(2, 5)[:, 3]], r"params\[1\] overlaps params\[0\]"),
             ([torch.ones(1, device=device).expand(4)], r"params\[0\] is an expanded view")]
    for params, says in cases:
        grads = [torch.ones_like(t) for t in params]
        with pytest.raises(ValueError, match=says):
            dg.dropgrad_step_(params, grads, 0.1, 0.2, seed=7, backend=name)
    assert torch.equal(base, before[0]) and torch.equal(w, before[1])
    # Disjoint views of one tensor are separate params, as before.
    dg.dropgrad_step_([base[0:5], base[5:10]], [torch.ones(5, device=device)] * 2, 0.1, 0.0, backend=name)
    assert torch.equal(base, before[0] - 0.1)


def test_dropgrad_step_in_place_refuses_a_graph():
    w = torch.randn(4, requires_grad=True)
    with pytest.raises(RuntimeError, match="not differentiable.*torch.no_grad"):
        dg.dropgrad_step_([w], [torch.randn(4)], 0.1, 0.1)
    with pytest.raises(RuntimeError, match="not differentiable"):
        torch.ops.dropgrad.dropgrad_step_([w], [torch.randn(4)], [], 0.1, 0.0, 0.1, 2, 1, 0)
    with torch.no_grad():
        dg.dropgrad_step_([w], [torch.randn(4)], 0.1, 0.1)


@pytest.mark.numerics  # the reference computes softplus and exp with ATen
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("deterministic", [False, True])
def test_meta_dropout(backend, dtype, deterministic):
    name, device = backend
    for shape, nc in (((0,), False), ((3,), False), ((2, 3, 9, 9), False), ((40, 30), True)):
        f, a = make(shape, dtype, device, 1, nc), make(shape, dtype, device, 2, nc) * 8  # reaches softplus' threshold
        got = dg.meta_dropout(f, a, deterministic=deterministic, seed=2**40, offset=4, backend=name)
        want = R.meta_dropout(f.cpu(), a.cpu(), deterministic=deterministic, seed=2**40, offset=4)
        assert_matches(got, want, backend, ulps=4)


@pytest.mark.numerics  # the reference computes softplus and sigmoid with ATen
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("deterministic", [False, True])
def test_meta_dropout_backward(backend, dtype, deterministic):
    """The fused backward (grad_out * softplus(z), grad_out * f * softplus'(z)) against the
    reference namespace's, past softplus' threshold: softplus and sigmoid a few ulps apart as in
    test_meta_dropout, and ga a product of three rounded factors, so 8 ulps."""
    name, device = backend
    xs = [make((37, 5), dtype, device, seed=i, noncontiguous=i == 1) * 3 for i in range(3)]
    xs[2][0, :3] = torch.tensor([25.0, -30.0, 19.5], dtype=dtype, device=device)
    got = dg.ops._kernels(name, xs[0].device).meta_dropout_backward.default(*xs, deterministic, 2**40, 8)
    want = dg.ops._kernels("reference", torch.device("cpu")).meta_dropout_backward.default(
        *(x.cpu() for x in xs), deterministic, 2**40, 8)
    for g, w in zip(got, want):
        assert_matches(g, w, backend, ulps=8)


@pytest.mark.numerics  # the reference computes softplus and exp with ATen
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("deterministic", [False, True])
def test_meta_dropout_double_backward(backend, dtype, deterministic):
    """The fused derivative of meta_dropout's backward against the reference formula, past softplus'
    threshold (z > 20) and at large negative z, where softplus'' must not cancel."""
    name, device = backend
    xs = [make((37, 5), dtype, device, seed=i, noncontiguous=i == 2) * 3 for i in range(5)]
    xs[4][0, :4] = torch.tensor([25.0, -30.0, 19.5, -12.0], dtype=dtype, device=device)
    ns = dg.ops._kernels(name, xs[0].device)
    got = ns.meta_dropout_double_backward(*xs, deterministic, 2**40, 8)
    args = dict(deterministic=deterministic, seed=2**40, offset=8)
    want = R.meta_dropout_double_backward(*(x.cpu() for x in xs), **args)
    terms = R.meta_dropout_double_backward_terms(*(x.cpu() for x in xs), **args)
    for g, w, t in zip(got, want, terms):
        assert_within_summands(g, w, t, ulps=16)


def assert_within_summands(got, want, terms, ulps):
    """|got - want| <= ulps * eps(compute) * sum |term| + one ulp of the output dtype.

    Each summand is a product of exp/log1p/sigmoid values whose last bits depend on the
    implementation (the float32 kernels' polynomials, libm, ATen's or numpy's SIMD paths, which
    differ between AVX2 and AVX-512 machines): a few ulps per primitive, 16 ulps of the compute
    type for the chain of three primitives and four roundings. A sum of summands of opposite signs
    cancels, so its error is bounded by the summands' magnitudes, not by the result's; the last
    ulp is the rounding of a float32 result to a half-precision output, which can go either way."""
    got = got.cpu()
    assert got.dtype == want.dtype and got.shape == want.shape
    c = terms[0].dtype
    scale = sum(t.abs() for t in terms)
    bound = ulps * EPS[c] * scale + EPS[want.dtype] * want.to(c).abs()
    err = (got.to(c) - want.to(c)).abs()
    assert torch.equal(got.isnan(), want.isnan())
    bad = (err > bound) & ~want.isnan()
    assert not bad.any(), f"{int(bad.sum())} elements off: worst {float((err - bound).max()):.3g} past the bound"


@pytest.mark.numerics  # the reference computes softplus and exp with ATen
@pytest.mark.parametrize("dtype", DTYPES)
def test_logit_noise(backend, dtype):
    # One update kernel in mode "normal" (lr = -1): mu + softplus(s) * eps, exact like the updates.
    name, device = backend
    for mu_shape, s_shape in (((0, 5), (0, 1)), ((7, 5), (7, 1)), ((3, 4, 10), (3, 4, 1)), ((6,), (1,))):
        mu, s = make(mu_shape, dtype, device, 1), make(s_shape, dtype, device, 2) * 3
        got = dg.logit_noise(mu, s, seed=2**36 + 5, offset=12, backend=name)
        assert_matches(got, R.logit_noise(mu.cpu(), s.cpu(), seed=2**36 + 5, offset=12), backend)
        assert dg.logit_noise(mu, s, deterministic=True, backend=name) is mu
    # eps is the contract's N(0, 1) stream, the meta-dropout epsilon of the same (seed, offset).
    mu, s = torch.zeros(64, 1, device=device), torch.full((64, 1), 0.5413248546129181, device=device)  # softplus = 1
    eps = R.noise(64, 0.0, "normal", seed=9, offset=4)
    torch.testing.assert_close(dg.logit_noise(mu, s, seed=9, offset=4, backend=name).cpu().reshape(-1), eps,
                               rtol=1e-6, atol=1e-6)


@pytest.mark.numerics  # the reference computes softplus and exp with ATen
def test_meta_dropout_deterministic_ignores_seed(backend):
    name, device = backend
    f, a = make((100,), torch.float32, device, 1), make((100,), torch.float32, device, 2)
    x = dg.meta_dropout(f, a, deterministic=True, seed=1, backend=name)
    y = dg.meta_dropout(f, a, deterministic=True, seed=2, backend=name)
    assert torch.equal(x, y)
    torch.testing.assert_close(x.cpu(), (f * torch.nn.functional.softplus(a)).cpu())


def test_nan_and_inf_propagate_like_the_formula(backend):
    name, device = backend
    w = torch.tensor([1.0, float("nan"), float("inf"), 2.0, 3.0], device=device)
    g = torch.tensor([float("nan"), 1.0, 1.0, float("inf"), 0.0], device=device)
    got = dg.dropgrad_update(w, g, 0.1, 0.2, "gaussian", seed=3, backend=name).cpu()
    want = R.dropgrad_update(w.cpu(), g.cpu(), 0.1, 0.2, "gaussian", seed=3)
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.isinf(), want.isinf())


def test_inputs_are_not_modified(backend):
    name, device = backend
    w, g = make((50,), torch.float32, device, 1), make((50,), torch.float32, device, 2)
    w0, g0 = w.clone(), g.clone()
    dg.dropgrad_update(w, g, 0.1, 0.2, seed=1, backend=name)
    dg.dropgrad_step([w], [g], 0.1, 0.2, seed=1, backend=name)
    dg.drop_grad(g, 0.2, seed=1, backend=name)
    dg.meta_dropout(w, g, seed=1, backend=name)
    assert torch.equal(w, w0) and torch.equal(g, g0)


_HUGE_PAGE_CHECK = """
import torch, dropgrad_cuda as dg
from dropgrad_cuda import reference as R
g = torch.Generator().manual_seed(0)
w, d, f, a = (torch.randn(1_200_000, generator=g) for _ in range(4))
got = dg.dropgrad_step([w, d], [d, w], 0.01, 0.1, "gaussian", seed=3, backend="cpu")
want = R.dropgrad_step([w, d], [d, w], 0.01, 0.1, "gaussian", seed=3)
assert all(torch.equal(x, y) for x, y in zip(got, want))
gf, ga = torch.ops.dropgrad.meta_dropout_backward(w, f, a, False, 5, 0)
z = a + R.noise(a.numel(), 0.0, "normal", seed=5)
tol = 4 * 2.0**-23
torch.testing.assert_close(gf, w * torch.nn.functional.softplus(z), rtol=tol, atol=tol)
torch.testing.assert_close(ga, (w * f) * torch.sigmoid(z), rtol=tol, atol=tol)
print("ok")
"""


@pytest.mark.parametrize("thp", ["0", "1"])
def test_large_outputs_are_exact_with_and_without_huge_pages(thp):
    # 1.2M float32 elements (4.8 MB): with DROPGRAD_THP=1 (read once per process, hence the
    # subprocess) these outputs take the CPU kernels' huge-page path.
    import subprocess
    import sys
    env = dict(os.environ, DROPGRAD_THP=thp)
    run = subprocess.run([sys.executable, "-c", _HUGE_PAGE_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


def _available_gib():
    with open("/proc/meminfo") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("MemAvailable")) / 2**20


@pytest.mark.skipif(_available_gib() < 12, reason="needs 12 GiB of free memory for two 4.3 GB tensors")
def test_cpu_kernels_index_past_2_31_elements():
    # 2^31 + 1000 bfloat16 elements (4.3 GB a tensor): element i's noise must come from stream
    # position i past the 32-bit range, as the reference computes it for each slice by its offset.
    n = 2**31 + 1000
    out = dg.drop_grad(torch.ones(n, dtype=torch.bfloat16), 0.1, "gaussian", seed=5, backend="cpu")
    for start, stop in ((0, 1024), (2**31 - 512, 2**31 + 512), (n - 997, n)):
        offset = start // 4 * 4
        want = R.drop_grad(torch.ones(stop - offset, dtype=torch.bfloat16), 0.1, "gaussian", seed=5, offset=offset)
        assert torch.equal(out[start:stop], want[start - offset:])
