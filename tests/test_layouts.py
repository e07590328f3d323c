"""Memory layouts (docs/noise_contract.md): every op returns its first tensor's layout as torch's
preserve_format gives it, on every backend and in its fake, and the noise follows an element's
memory position in that layout; backward regenerates the forward's noise whatever layout its
cotangent comes in. main: channels_last inputs came back contiguous from the kernel backends and
their fakes, channels_last from the reference."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import dropgrad_cuda as dg
from dropgrad_cuda import reference as R

CL = torch.channels_last
SEED, OFFSET = 2**40 + 3, 12


def _t(seed, memory_format=torch.contiguous_format, shape=(2, 3, 4, 5)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).contiguous(memory_format=memory_format)


def _ops(backend):
    """op name -> (call on (x, y) where x sets the layout, the tensors to put in memory formats)."""
    kw = dict(seed=SEED, offset=OFFSET, backend=backend)
    return {
        "drop_grad": lambda x, y: dg.drop_grad(x, 0.2, "gaussian", **kw),
        "dropgrad_update": lambda x, y: dg.dropgrad_update(x, y, 0.1, 0.2, "bernoulli", **kw),
        "dropgrad_update_full_lr": lambda x, y: dg.dropgrad_update(x, y, (y.abs() * 0.01).contiguous(), 0.2, **kw),
        "dropgrad_step": lambda x, y: dg.dropgrad_step([x, y], [y, x], 0.1, 0.2, **kw)[0],
        "meta_dropout": lambda x, y: dg.meta_dropout(x, y, **kw),
        "logit_noise": lambda x, y: dg.logit_noise(x, y[..., :1].contiguous(), **kw),
    }


OPS = list(_ops("cpu"))


def _backends():
    out = ["reference", "cpu"]
    if dg.cuda_emulator_built():
        out.append("cuda-emulated")
    import os
    if os.environ.get("TRITON_INTERPRET") == "1":
        out.append("triton")
    return out


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("formats", [(CL, CL), (CL, torch.contiguous_format), (torch.contiguous_format, CL)],
                         ids=["both-cl", "first-cl", "second-cl"])
def test_outputs_take_the_first_tensors_layout_and_noise_follows_memory(backend, op, formats):
    x, y = _t(1, formats[0]), _t(2, formats[1])
    got = _ops(backend)[op](x, y)
    assert got.stride() == torch.empty_like(x).stride()  # torch's preserve_format
    # The rule stated: the result is the op on the tensors laid out in memory order (NHWC as a
    # contiguous tensor), seen through the layout's permutation.
    if formats[0] is CL and op != "logit_noise":  # logit_noise's scale is per row of mu's last dim
        nhwc = lambda t: t.permute(0, 2, 3, 1).contiguous()
        _same(got.permute(0, 2, 3, 1), _ops("reference")[op](nhwc(x), nhwc(y)), op)
    ref = _ops("reference")[op](x, y)
    assert ref.stride() == got.stride()
    _same(got, ref, op)


def _same(got, want, op):
    """Exact, but meta_dropout: its softplus is ATen's in the reference (4 ulps, as test_ops)."""
    if op == "meta_dropout":
        torch.testing.assert_close(got, want, rtol=4 * 2.0**-23, atol=4 * 2.0**-23)
    else:
        assert torch.equal(got, want)


@pytest.mark.parametrize("backend", [b for b in _backends() if b != "reference"])
def test_in_place_step_writes_a_channels_last_param_where_it_lies(backend):
    w, g = _t(1, CL), _t(2)
    want = w.clone()
    R.dropgrad_step_([want], [g], 0.1, 0.2, seed=SEED, offset=OFFSET)
    ptr, stride = w.data_ptr(), w.stride()
    dg.dropgrad_step_([w], [g], 0.1, 0.2, seed=SEED, offset=OFFSET, backend=backend)
    assert w.data_ptr() == ptr and w.stride() == stride and torch.equal(w, want)


@pytest.mark.parametrize("backend", ["cpu"] + (["cuda-emulated"] if dg.cuda_emulator_built() else []))
def test_fakes_give_the_kernels_layouts(backend):
    """torch.compile plans with the fakes: their strides must be the kernels'."""
    x, y = _t(1, CL), _t(2)
    want = {op: fn(x, y).stride() for op, fn in _ops(backend).items()}
    with FakeTensorMode() as mode:
        fx, fy = mode.from_tensor(x), mode.from_tensor(y)
        got = {op: fn(fx, fy).stride() for op, fn in _ops(backend).items()}
    assert got == want


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("op", ["drop_grad", "dropgrad_update", "dropgrad_step", "meta_dropout"])
def test_backward_regenerates_the_forward_noise_whatever_the_cotangents_layout(backend, op):
    """The forward ran channels_last; the cotangents come contiguous, channels_last and expanded:
    each gradient is the reference's (main could not fail here: it had no channels_last path)."""
    x, y = _t(1, CL).requires_grad_(), _t(2, CL).requires_grad_()
    out = _ops(backend)[op](x, y)
    ref = _ops("reference")[op](x, y)
    for cot in (_t(3), _t(3, CL), torch.ones(()).expand(out.shape)):
        got = torch.autograd.grad(out, (x, y), cot, retain_graph=True, allow_unused=True)
        want = torch.autograd.grad(ref, (x, y), cot, retain_graph=True, allow_unused=True)
        for a, b in zip(got, want):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=4 * 2.0**-23, atol=4 * 2.0**-23)


@pytest.mark.parametrize("backend", [b for b in _backends() if b != "reference"])
def test_in_place_step_writes_back_a_param_that_is_not_dense(backend):
    """A strided slice of a larger tensor: stepped through a contiguous copy (its stream in
    row-major order), written back into the slice, the rest of the base untouched."""
    base = _t(1, shape=(6, 8))
    w, g = base[:, ::2], _t(2, shape=(6, 4))
    want_base = base.clone()
    R.dropgrad_step_([want_base[:, ::2]], [g], 0.1, 0.2, seed=SEED, offset=OFFSET)
    dg.dropgrad_step_([w], [g], 0.1, 0.2, seed=SEED, offset=OFFSET, backend=backend)
    assert torch.equal(base, want_base) and not torch.equal(base, _t(1, shape=(6, 8)))
