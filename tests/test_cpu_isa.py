"""The CPU kernels' instruction sets (csrc/cpu/kernels.inc: baseline, AVX2, AVX-512), each forced in
turn: every path is bit-identical to the others and exact against the reference (meta_dropout's
softplus within its 4 ulps of ATen's). A machine runs only the paths its CPU has; the ones it
lacks are reported as skipped, never counted as passed."""
import pytest
import torch

import dropgrad_cuda as dg
from dropgrad_cuda import _C
from dropgrad_cuda import reference as R

ISAS = ("default", "avx2", "avx512")
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.fixture
def isa(request):
    name = request.param
    if name not in _C.cpu_isas():
        pytest.skip(f"this CPU does not run the {name} path")
    before = _C.cpu_isa()
    assert _C.cpu_isa(name) == name
    yield name
    _C.cpu_isa(before)


def _t(n, dtype, seed):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def _outputs(dtype, mode):
    """Every op's outputs on tensors spanning several blocks, with a tail and an offset past 2^32."""
    kw = dict(seed=2**35 + 7, offset=2**32 + 8, backend="cpu")
    n = 3 * 512 + 37
    w, g, f, a = (_t(n, dtype, s) for s in range(4))
    lr = _t(n, dtype, 9).abs()
    out = {"drop_grad": dg.drop_grad(g, 0.2, mode, **kw),
           "update": dg.dropgrad_update(w, g, 0.1, 0.2, mode, **kw),
           "update_full_lr": dg.dropgrad_update(w, g, lr, 0.2, mode, **kw),
           "step": dg.dropgrad_step([w, g[:100]], [g, w[:100]], 0.1, 0.2, mode, **kw)}
    stepped = [w.clone(), g[:100].clone()]
    dg.dropgrad_step_(stepped, [g, w[:100]], 0.1, 0.2, mode, weight_decay=0.01, **kw)
    out["step_"] = stepped
    if mode == "gaussian":  # meta_dropout's noise is always the normal one
        out["meta_dropout"] = dg.meta_dropout(f * 3, a * 8, **kw)
        out["meta_dropout_backward"] = torch.ops.dropgrad.meta_dropout_backward(g, f * 3, a * 8, False, kw["seed"],
                                                                                 kw["offset"], None)
        out["meta_dropout_double_backward"] = torch.ops.dropgrad.meta_dropout_double_backward(
            w, lr, g, f * 3, a * 8, False, kw["seed"], kw["offset"], None)
        out["noise"] = torch.ops.dropgrad.noise(f, 0.0, 3, kw["seed"], kw["offset"], None)
    return out, (w, g, f, a, lr, kw)


def _flat(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["gaussian", "bernoulli"])
def test_each_instruction_set_matches_the_reference(isa, dtype, mode):
    out, (w, g, f, a, lr, kw) = _outputs(dtype, mode)
    seed, offset = kw["seed"], kw["offset"]
    want = {"drop_grad": R.drop_grad(g, 0.2, mode, seed=seed, offset=offset),
            "update": R.dropgrad_update(w, g, 0.1, 0.2, mode, seed=seed, offset=offset),
            "update_full_lr": R.dropgrad_update(w, g, lr, 0.2, mode, seed=seed, offset=offset),
            "step": R.dropgrad_step([w, g[:100]], [g, w[:100]], 0.1, 0.2, mode, seed=seed, offset=offset)}
    stepped = [w.clone(), g[:100].clone()]
    R.dropgrad_step_(stepped, [g, w[:100]], 0.1, 0.2, mode, seed=seed, offset=offset, weight_decay=0.01)
    want["step_"] = stepped
    for name, expected in want.items():
        for x, y in zip(_flat(out[name]), _flat(expected)):
            assert torch.equal(x, y), name
    if mode == "gaussian":
        tol = 4 * {torch.float64: 2.0**-52}.get(dtype, 2.0**-23)
        ulp = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}.get(dtype, 0.0)  # one rounding of a narrow output
        got = out["meta_dropout"]
        ref = R.meta_dropout(f * 3, a * 8, seed=seed, offset=offset)
        torch.testing.assert_close(got.double(), ref.double(), rtol=tol + ulp, atol=tol + ulp)
        assert torch.equal(out["noise"], R.noise(f.numel(), 0.0, "normal", seed, offset))


def test_every_instruction_set_gives_the_same_bits():
    """Stronger than the reference comparison: meta_dropout and its backward ops too, bit for bit."""
    runs = {}
    before = _C.cpu_isa()
    try:
        for name in _C.cpu_isas():
            _C.cpu_isa(name)
            runs[name] = {dt: _outputs(dt, "gaussian")[0] for dt in DTYPES}
    finally:
        _C.cpu_isa(before)
    first = next(iter(runs.values()))
    for name, run in runs.items():
        for dt in DTYPES:
            for op, x in run[dt].items():
                assert all(torch.equal(p, q) for p, q in zip(_flat(x), _flat(first[dt][op]))), (name, dt, op)
    assert len(runs) >= 2  # every x86-64 CPU these run on has at least AVX2 beside the baseline


def test_forcing_an_instruction_set_the_cpu_lacks_is_refused():
    with pytest.raises(ValueError, match="does not run"):
        _C.cpu_isa("avx1024")
    assert _C.cpu_isa() in ISAS and _C.cpu_isas()[0] == "default"
