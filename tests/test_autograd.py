"""Exact gradients of every order: gradcheck/gradgradcheck in float64, nothing but inputs saved
for backward, and a second-order MAML meta-gradient equal to the reference's."""
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck
from torch.autograd.graph import saved_tensors_hooks

import dropgrad_cuda as dg

# gradcheck's finite differences and the composite third order: ATen's exp and
# log1p, and in float64 the interpreter's numpy
pytestmark = pytest.mark.numerics


def f64(*shape, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(device).requires_grad_()


def check_both_orders(fn, inputs, backend=None):
    """gradcheck and gradgradcheck; Triton's interpreter (10 ms a program, so minutes for a full
    Jacobian) in gradcheck's fast mode: the Jacobian along random directions, still against
    finite differences, and its forward and backward ops are also compared with the reference's
    element by element (test_ops)."""
    fast = backend is not None and backend[0] == "triton" and backend[1] == "cpu"
    assert gradcheck(fn, inputs, eps=1e-6, atol=1e-5, fast_mode=fast)
    assert gradgradcheck(fn, inputs, eps=1e-6, atol=1e-5, fast_mode=fast)


@pytest.mark.parametrize("mode", ["gaussian", "bernoulli", "none"])
def test_drop_grad_gradients(backend, mode):
    name, device = backend
    check_both_orders(lambda g: dg.drop_grad(g, 0.2, mode, seed=3, backend=name), (f64(5, 3, device=device),), backend)


@pytest.mark.parametrize("mode", ["gaussian", "bernoulli"])
@pytest.mark.parametrize("lr_form", ["float", "0d", "full"])
def test_dropgrad_update_gradients(backend, mode, lr_form):
    name, device = backend
    w, g = f64(4, 3, seed=1, device=device), f64(4, 3, seed=2, device=device)
    if lr_form == "float":
        check_both_orders(lambda w, g: dg.dropgrad_update(w, g, 0.3, 0.2, mode, seed=9, backend=name), (w, g), backend)
    else:
        lr = f64(seed=3, device=device) if lr_form == "0d" else f64(4, 3, seed=3, device=device)
        check_both_orders(lambda w, g, l: dg.dropgrad_update(w, g, l, 0.2, mode, seed=9, backend=name), (w, g, lr),
                          backend)


@pytest.mark.parametrize("lr_form", ["float", "list"])
def test_dropgrad_step_gradients(backend, lr_form):
    name, device = backend
    ws = [f64(3, seed=1, device=device), f64(2, 3, seed=2, device=device)]
    gs = [f64(3, seed=3, device=device), f64(2, 3, seed=4, device=device)]
    lrs = [f64(seed=5, device=device), f64(2, 3, seed=6, device=device)]

    def fn(*xs):
        lr = list(xs[4:]) if lr_form == "list" else 0.1
        return tuple(dg.dropgrad_step(list(xs[:2]), list(xs[2:4]), lr, 0.2, seed=4, backend=name))

    check_both_orders(fn, tuple(ws + gs + (lrs if lr_form == "list" else [])), backend)


@pytest.mark.parametrize("deterministic", [False, True])
def test_meta_dropout_gradients(backend, deterministic):
    name, device = backend
    f, a = f64(3, 4, seed=1, device=device), f64(3, 4, seed=2, device=device)
    fn = lambda f, a: dg.meta_dropout(f, a, deterministic=deterministic, seed=2**35, backend=name)  # noqa: E731
    check_both_orders(fn, (f, a), backend)
    # The softplus threshold: beyond 20 PyTorch's derivative is exactly 1, so is ours.
    a_big = (a.detach() + 25).requires_grad_()
    check_both_orders(fn, (f, a_big), backend)


def test_logit_noise_gradients(backend):
    name, device = backend
    mu, s = f64(4, 5, seed=1, device=device), f64(4, 1, seed=2, device=device)
    check_both_orders(lambda mu, s: dg.logit_noise(mu, s, seed=2**33, backend=name), (mu, s), backend)


def test_meta_dropout_third_order(backend):
    name, device = backend
    f, a = f64(6, seed=1, device=device), f64(6, seed=2, device=device)
    fr, ar = f.detach().clone().requires_grad_(), a.detach().clone().requires_grad_()
    outs = []
    for bk, (x, y) in ((name, (f, a)), ("reference", (fr, ar))):
        h = dg.meta_dropout(x, y, seed=1, backend=bk)
        (ga,) = torch.autograd.grad(h.pow(2).sum(), y, create_graph=True)
        (gga,) = torch.autograd.grad(ga.pow(2).sum(), y, create_graph=True)
        (ggga,) = torch.autograd.grad(gga.sum(), [x])
        outs.append(ggga)
    torch.testing.assert_close(outs[0].cpu(), outs[1].cpu(), rtol=1e-12, atol=1e-12)


def test_meta_dropout_third_order_keeps_float32_precision_at_large_z(backend):
    """The third order's second and third softplus derivatives in float32 agree with float64 to a
    few ulps where sigmoid(z) rounds to 1 (z = 12..18); main's s * (1 - s) lost a digit per unit of
    z there (10% off at z = 15). Deterministic, so z = a exactly in both dtypes."""
    name, device = backend
    z = torch.tensor([12.0, 15.0, 18.0, -15.0, 0.5], dtype=torch.float64)
    ones = torch.ones_like(z)
    outs = []
    for dtype in (torch.float32, torch.float64):
        # ggf = 0: d a = gga gout f softplus''(z), whose derivatives in f and a are one product each
        # (of softplus'' and of softplus'''), so nothing cancels and float32 must keep its precision.
        ggf, gga, gout, f, a = (t.to(dtype).to(device).requires_grad_() for t in (0 * ones, ones, ones, 2 * ones, z))
        ns = dg.ops._kernels(name, a.device)
        d_gout, d_f, d_a = ns.meta_dropout_double_backward(ggf, gga, gout, f, a, True, 0, 0)
        outs.append(torch.autograd.grad(d_a.sum(), (f, a)))
    for got, want in zip(*outs):
        torch.testing.assert_close(got.cpu().double(), want.cpu(), rtol=2e-6, atol=0)


def saved_by(fn):
    """The tensors autograd saves while fn runs."""
    saved = []
    with saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fn()
    return saved


def test_no_noise_is_saved_for_backward(backend):
    name, device = backend
    w, g, f, a = (f64(1000, seed=i, device=device).float().detach().requires_grad_() for i in range(4))
    lr = torch.full((1000,), 0.1, device=device, requires_grad=True)
    inputs = {t.data_ptr() for t in (w, g, f, a, lr)}
    for fn in (lambda: dg.dropgrad_update(w, g, 0.1, 0.2, seed=1, backend=name),
               lambda: dg.dropgrad_update(w, g, lr, 0.2, seed=1, backend=name),
               lambda: dg.dropgrad_step([w], [g], [lr], 0.2, seed=1, backend=name),
               lambda: dg.drop_grad(g, 0.2, seed=1, backend=name),
               lambda: dg.meta_dropout(f, a, seed=1, backend=name)):
        assert all(t.data_ptr() in inputs for t in saved_by(fn))
    # The eager reference, by contrast, keeps its noise tensor alive for backward.
    assert any(t.data_ptr() not in inputs for t in saved_by(
        lambda: dg.dropgrad_update(w, g, lr, 0.2, seed=1, backend="reference")))


# ---------------------------------------------------------------- second-order MAML
def conv_net_params(device, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = {"c1.w": (4, 1, 3, 3), "c1.b": (4,), "n1.w": (4, 1, 3, 3), "c2.w": (4, 4, 3, 3), "c2.b": (4,),
              "fc.w": (3, 16), "fc.b": (3,)}
    return {k: (0.3 * torch.randn(*s, generator=g, dtype=torch.float64)).to(device).requires_grad_()
            for k, s in shapes.items()}


def forward(params, x, backend, seed, deterministic):
    """Conv-ReLU-pool blocks; block 1 applies meta-dropout with a noise generator fed by its input."""
    mu = F.conv2d(x, params["c1.w"], params["c1.b"], padding=1)
    a = F.conv2d(x, params["n1.w"], padding=1)
    h = dg.meta_dropout(mu, a, deterministic=deterministic, seed=seed, backend=backend)
    h = F.max_pool2d(F.relu(h), 2)
    h = F.max_pool2d(F.relu(F.conv2d(h, params["c2.w"], params["c2.b"], padding=1)), 2)
    return F.linear(h.flatten(1), params["fc.w"], params["fc.b"])


def meta_gradient(backend, device, mode):
    params = conv_net_params(device)
    inner = [k for k in params if not k.startswith("n1")]  # the noise generator is outer-loop only
    g = torch.Generator().manual_seed(1)
    xs, ys = torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64).to(device), torch.arange(6).remainder(3).to(device)
    xq, yq = torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64).to(device), torch.arange(6).remainder(3).to(device)
    fast = dict(params)
    for step in range(2):
        loss = F.cross_entropy(forward(fast, xs, backend, seed=100 + step, deterministic=False), ys)
        grads = torch.autograd.grad(loss, [fast[k] for k in inner], create_graph=True)
        new = dg.dropgrad_step([fast[k] for k in inner], list(grads), 0.4, 0.2, mode, seed=200 + step, backend=backend)
        fast.update(zip(inner, new))
    outer = F.cross_entropy(forward(fast, xq, backend, seed=0, deterministic=True), yq)
    return torch.autograd.grad(outer, list(params.values()))


@pytest.mark.parametrize("mode", ["gaussian", "bernoulli"])
def test_second_order_maml_meta_gradient_equals_reference(backend, mode):
    name, device = backend
    got = meta_gradient(name, device, mode)
    want = meta_gradient("reference", "cpu", mode)
    for x, y in zip(got, want):
        assert x.abs().sum() > 0  # every parameter, the noise generator included, gets a meta-gradient
        torch.testing.assert_close(x.cpu(), y, rtol=1e-10, atol=1e-12)
    first = meta_gradient(name, device, "none")
    assert any((x - y).abs().max() > 1e-6 for x, y in zip(got, first))  # the noise really acts


def test_rng_state_replaces_the_seed_and_adds_its_offset(backend):
    """The device-side stream (csrc/ops.cpp: rng_state) reaches every kernel and every backward."""
    name, device = backend
    ns = dg.ops._kernels(name, torch.device(device))
    state = torch.tensor([2**40 + 1, 8], device=device)
    w, g, f = (f64(37, seed=i, device=device) for i in range(3))
    lr = f64(seed=4, device=device)
    pairs = [
        (lambda: ns.noise(w.detach(), 0.2, 2, 999, 4, state), lambda: ns.noise(w.detach(), 0.2, 2, 2**40 + 1, 12)),
        (lambda: ns.drop_grad(g, 0.2, 1, 999, 4, state), lambda: ns.drop_grad(g, 0.2, 1, 2**40 + 1, 12)),
        (lambda: ns.dropgrad_update(w, g, lr, 0.0, 0.2, 2, 999, 4, state),
         lambda: ns.dropgrad_update(w, g, lr, 0.0, 0.2, 2, 2**40 + 1, 12)),
        (lambda: ns.dropgrad_step([w, f], [g, g], [lr, lr], 0.0, 0.2, 2, 999, 4, state)[1],
         lambda: ns.dropgrad_step([w, f], [g, g], [lr, lr], 0.0, 0.2, 2, 2**40 + 1, 12)[1]),
        (lambda: ns.meta_dropout(f, g, False, 999, 4, state), lambda: ns.meta_dropout(f, g, False, 2**40 + 1, 12)),
    ]
    for with_state, plain in pairs:
        x, y = with_state(), plain()
        assert torch.equal(x, y)
        if x.requires_grad:  # first and second order regenerate the same noise from the state
            inputs = [t for t in (w, g, f, lr) if t.requires_grad]
            gx = torch.autograd.grad(x.pow(2).sum(), inputs, create_graph=True, allow_unused=True)
            gy = torch.autograd.grad(y.pow(2).sum(), inputs, create_graph=True, allow_unused=True)
            for a, b in zip(gx, gy):
                assert (a is None and b is None) or torch.equal(a, b)
            used = [a for a in gx if a is not None]
            hx = torch.autograd.grad(sum(a.sum() for a in used), inputs, allow_unused=True)
            hy = torch.autograd.grad(sum(b.sum() for b in gy if b is not None), inputs, allow_unused=True)
            for a, b in zip(hx, hy):
                assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and dg.cuda_kernels_built()), reason="needs a CUDA GPU")
def test_cuda_graph_replays_draw_fresh_noise():
    g = torch.randn(4096, device="cuda")
    out = torch.empty_like(g)
    graph = torch.cuda.CUDAGraph()
    dg.drop_grad(g, 0.2)  # warm-up outside the capture
    with torch.cuda.graph(graph):
        out.copy_(dg.drop_grad(g, 0.2))
    graph.replay()
    first = out.clone()
    graph.replay()
    assert not torch.equal(first, out)
