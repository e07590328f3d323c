"""torch.func over every op: grad, vjp, jacrev and grad of grad equal torch.autograd's results bit
for bit; vmap is one fused call whose noise follows its randomness argument (noise contract,
"Batched streams"): with "different" the batched call equals B calls at offset + b * span."""
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jacrev, vjp, vmap
from torch.utils._python_dispatch import TorchDispatchMode

import dropgrad_cuda as dg
from dropgrad_cuda.integrations import func as dfunc

# the meta-losses and their gradients: ATen's convolutions and matrix products
pytestmark = pytest.mark.numerics


def f64(*shape, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(device)


def span(n):
    return -(-n // 4) * 4


# Each op as a function of its differentiable inputs, at a fixed seed and offset.
def op_cases(name):
    return {
        "drop_grad": (lambda g, offset=4: dg.drop_grad(g, 0.2, seed=5, offset=offset, backend=name), 1),
        "dropgrad_update/float": (lambda w, g, offset=4: dg.dropgrad_update(w, g, 0.3, 0.2, seed=5, offset=offset,
                                                                             backend=name), 2),
        "dropgrad_update/tensor-lr": (lambda w, g, l, offset=4: dg.dropgrad_update(
            w, g, l, 0.2, "bernoulli", seed=5, offset=offset, backend=name), 3),
        "meta_dropout": (lambda f, a, offset=4: dg.meta_dropout(f, a, seed=5, offset=offset, backend=name), 2),
        "logit_noise": (lambda mu, s, offset=4: dg.logit_noise(mu, s, seed=5, offset=offset, backend=name), 2),
    }


CASES = list(op_cases("cpu"))


def inputs(case, device, shape=(3, 5)):
    n = op_cases("cpu")[case][1]
    xs = [f64(*shape, seed=i, device=device) for i in range(n)]
    if case == "logit_noise":
        xs[1] = f64(*shape[:-1], 1, seed=9, device=device)
    if case == "dropgrad_update/tensor-lr":
        xs[2] = f64(seed=7, device=device).abs()
    return xs


def loss_of(fn):
    return lambda *xs: fn(*xs).pow(3).sum()


@pytest.mark.parametrize("case", CASES)
def test_grad_vjp_jacrev_equal_autograd(backend, case):
    name, device = backend
    fn, n = op_cases(name)[case]
    xs = inputs(case, device)
    leaves = [x.clone().requires_grad_() for x in xs]
    want = torch.autograd.grad(loss_of(fn)(*leaves), leaves)
    got = grad(loss_of(fn), argnums=tuple(range(n)))(*xs)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    out, pullback = vjp(fn, *xs)
    cot = f64(*out.shape, seed=11, device=device)
    want = torch.autograd.grad(fn(*leaves), leaves, cot)
    for a, b in zip(pullback(cot), want):
        assert torch.equal(a, b)
    jac = jacrev(fn)(*xs)  # row k of the Jacobian is the vjp with the k-th unit cotangent
    flat = out.reshape(-1)
    for k in (0, flat.numel() - 1):
        e = torch.zeros_like(flat)
        e[k] = 1
        (row,) = torch.autograd.grad(fn(*leaves), leaves[0], e.reshape(out.shape))
        assert torch.equal(jac[(*divmod(k, out.shape[-1]),)] if out.dim() == 2 else jac[k], row)


@pytest.mark.parametrize("case", CASES)
def test_grad_of_grad_equals_create_graph(backend, case):
    name, device = backend
    fn, _ = op_cases(name)[case]
    xs = inputs(case, device)
    leaves = [x.clone().requires_grad_() for x in xs]
    (g1,) = torch.autograd.grad(loss_of(fn)(*leaves), leaves[0], create_graph=True)
    want = torch.autograd.grad(g1.sum(), leaves, allow_unused=True)
    got = grad(lambda *ys: grad(loss_of(fn))(*ys).sum(), argnums=tuple(range(len(xs))))(*xs)
    for a, b in zip(got, want):
        assert torch.equal(a, torch.zeros_like(a) if b is None else b)
    assert got[0].abs().sum() > 0


def test_dropgrad_step_under_grad(backend):
    name, device = backend
    ws, gs = [f64(3, seed=1, device=device), f64(2, 3, seed=2, device=device)], [f64(3, seed=3, device=device),
                                                                                    f64(2, 3, seed=4, device=device)]

    def loss(ws, gs):
        return sum(t.pow(3).sum() for t in dg.dropgrad_step(ws, gs, 0.1, 0.2, seed=4, backend=name))

    leaves = [t.clone().requires_grad_() for t in ws + gs]
    want = torch.autograd.grad(loss(leaves[:2], leaves[2:]), leaves)
    got_w, got_g = grad(loss, argnums=(0, 1))(ws, gs)
    for a, b in zip(got_w + got_g, want):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- MAML, both ways
def mlp_params(device):
    g = torch.Generator().manual_seed(0)
    shapes = {"l1.weight": (8, 2), "l1.bias": (8,), "g1.weight": (8, 2), "l2.weight": (3, 8), "l2.bias": (3,)}
    return {k: (0.5 * torch.randn(*s, generator=g, dtype=torch.float64)).to(device) for k, s in shapes.items()}


def net(params, x, name, seed, deterministic):
    h = dg.meta_dropout(F.linear(x, params["l1.weight"], params["l1.bias"]), F.linear(x, params["g1.weight"]),
                        deterministic=deterministic, seed=seed, backend=name)
    return F.linear(F.relu(h), params["l2.weight"], params["l2.bias"])


INNER = ("l1.weight", "l1.bias", "l2.weight", "l2.bias")


def task(device):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(12, 2, generator=g, dtype=torch.float64).to(device)
    return x[:6], torch.arange(6, device=device) % 3, x[6:], torch.arange(6, device=device) % 3


def meta_loss_func(params, name, device):
    xs, ys, xq, yq = task(device)
    fast = dict(params)
    for step in range(2):
        inner = {k: fast[k] for k in INNER}
        g = grad(lambda p: F.cross_entropy(net({**fast, **p}, xs, name, 100 + step, False), ys))(inner)
        fast.update(zip(INNER, dg.dropgrad_step(list(inner.values()), list(g.values()), 0.4, 0.2, seed=200 + step,
                                                backend=name)))
    return F.cross_entropy(net(fast, xq, name, 0, True), yq)


def meta_loss_autograd(params, name, device):
    xs, ys, xq, yq = task(device)
    fast = dict(params)
    for step in range(2):
        loss = F.cross_entropy(net(fast, xs, name, 100 + step, False), ys)
        gs = torch.autograd.grad(loss, [fast[k] for k in INNER], create_graph=True)
        fast.update(zip(INNER, dg.dropgrad_step([fast[k] for k in INNER], list(gs), 0.4, 0.2, seed=200 + step,
                                                backend=name)))
    return F.cross_entropy(net(fast, xq, name, 0, True), yq)


def test_second_order_maml_with_torch_func_equals_autograd(backend):
    name, device = backend
    params = mlp_params(device)
    got = grad(meta_loss_func)(params, name, device)
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    want = torch.autograd.grad(meta_loss_autograd(leaves, name, device), list(leaves.values()))
    for k, b in zip(params, want):
        assert b.abs().sum() > 0, k  # the noise generator g1 included: second order reaches it
        assert torch.equal(got[k], b), k


# ---------------------------------------------------------------- vmap
class CountOps(TorchDispatchMode):
    """The dropgrad kernel calls that reach the backend, by op name."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace in ("dropgrad", "dropgrad_triton", "dropgrad_emulated"):
            self.calls.append(func._opname)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("shape", [(2, 3), (4,)])  # numel 6: spans padded to 8; numel 4: none
def test_vmap_different_is_one_call_equal_to_per_element_offsets(backend, case, shape):
    name, device = backend
    fn, _ = op_cases(name)[case]
    batch = 3
    xs = [torch.stack([x + b for b in range(batch)]) for x in inputs(case, device, shape)]
    if case == "dropgrad_update/tensor-lr":
        xs[2] = xs[2][0]  # an unbatched 0-d lr: in_dims None
    dims = [0] * len(xs) if case != "dropgrad_update/tensor-lr" else [0, 0, None]
    with CountOps() as count:
        got = vmap(fn, in_dims=tuple(dims), randomness="different")(*xs)
    assert len(count.calls) == 1, count.calls
    n = span(torch.Size(shape).numel())
    for b in range(batch):
        args = [x[b] if d == 0 else x for x, d in zip(xs, dims)]
        assert torch.equal(got[b], fn(*args, offset=4 + b * n))
        ref = op_cases("reference")[case][0](*[a.cpu() for a in args], offset=4 + b * n)
        if case == "meta_dropout":  # softplus: 4 ulps of PyTorch's (test_ops)
            torch.testing.assert_close(got[b].cpu(), ref, rtol=4 * 2**-52, atol=4 * 2**-52)
        else:
            assert torch.equal(got[b].cpu(), ref)


def test_vmap_randomness_same_and_error(backend):
    name, device = backend
    gs = f64(3, 5, device=device)
    same = vmap(lambda g: dg.drop_grad(g, 0.2, seed=5, backend=name), randomness="same")(gs)
    for b in range(3):
        assert torch.equal(same[b], dg.drop_grad(gs[b], 0.2, seed=5, backend=name))
    with pytest.raises(RuntimeError, match="randomness"):
        vmap(lambda g: dg.drop_grad(g, 0.2, seed=5, backend=name))(gs)
    with pytest.raises(RuntimeError, match="randomness"):
        vmap(lambda f, a: dg.meta_dropout(f, a, backend=name))(gs, gs)
    # Noise off: vmap's default "error" mode accepts it, and nothing is drawn.
    torch.manual_seed(0)
    for fn in (lambda g: dg.drop_grad(g, 0.2, "none", backend=name),
               lambda g: dg.dropgrad_update(g, g, 0.1, 0.0, backend=name),
               lambda g: dg.meta_dropout(g, g, deterministic=True, backend=name),
               lambda g: dg.logit_noise(g, g[:1], deterministic=True, backend=name)):
        out = vmap(fn)(gs)
        assert torch.equal(out[1], fn(gs[1]))
    assert torch.equal(torch.rand(3), torch.manual_seed(0) and torch.rand(3))


def test_vmap_nested_and_in_dims(backend):
    name, device = backend
    g = f64(2, 5, 3, device=device)  # batch dims 0 and 2; elements of 5
    fn = lambda x: dg.drop_grad(x, 0.2, seed=5, offset=8, backend=name)  # noqa: E731
    got = vmap(vmap(fn, in_dims=1, randomness="different"), in_dims=0, randomness="different")(g)
    assert got.shape == (2, 3, 5)
    for i in range(2):
        for j in range(3):  # outer element i holds 3 inner elements of span 8
            assert torch.equal(got[i, j], fn(g[i, :, j]) if i == j == 0 else
                               dg.drop_grad(g[i, :, j], 0.2, seed=5, offset=8 + (3 * i + j) * 8, backend=name))


def test_vmap_dropgrad_step_over_batched_lists(backend):
    name, device = backend
    ws = [f64(3, 3, seed=1, device=device), f64(3, 5, seed=2, device=device)]  # elements of 3 and 5
    gs = [f64(3, 3, seed=3, device=device), f64(3, 5, seed=4, device=device)]
    lrs = [f64(3, seed=5, device=device).abs(), f64(seed=6, device=device).abs()]  # one batched, one shared
    fn = lambda w, g, l: dg.dropgrad_step(w, g, l, 0.2, seed=7, offset=4, backend=name)  # noqa: E731
    with CountOps() as count:
        got = vmap(fn, in_dims=([1, 0], [1, 0], [0, None]), randomness="different")(ws, gs, lrs)
    assert count.calls == ["dropgrad_step"]
    for b in range(3):
        elem_w, elem_g = [ws[0][:, b], ws[1][b]], [gs[0][:, b], gs[1][b]]
        want = dg.dropgrad_step(elem_w, elem_g, [lrs[0][b], lrs[1]], 0.2, seed=7, offset=4 + b * (4 + 8),
                                backend=name)
        for x, y in zip(got, want):
            assert torch.equal(x[b], y)


LIST_LRS = {  # dropgrad_step's lrs for a batch of 3 lists of shapes (2, 3) and (5,)
    "none": lambda d: [],
    "0-d": lambda d: [f64(seed=5, device=d).abs(), f64(seed=6, device=d).abs()],
    "per list": lambda d: [f64(3, 2, 3, seed=5, device=d).abs(), f64(3, 5, seed=6, device=d).abs()],
    "one list's, shared": lambda d: [f64(2, 3, seed=5, device=d).abs(), f64(5, seed=6, device=d).abs()],
}


@pytest.mark.parametrize("lrs", list(LIST_LRS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_dropgrad_step_batch_equals_a_call_per_list(backend, lrs, dtype):
    """The kernels' batch argument, which the vmap rule calls: list b of a batch gets the stream
    of a call of its own at offset + b * span(list), with its own rows of a per-list lr."""
    name, device = backend
    ns = dg.ops._kernels(name, torch.device(device))
    ws = [f64(3, 2, 3, seed=1, device=device).to(dtype), f64(3, 5, seed=2, device=device).to(dtype)]
    gs = [f64(3, 2, 3, seed=3, device=device).to(dtype), f64(3, 5, seed=4, device=device).to(dtype)]
    ls = [l.to(dtype) if l.dim() else l for l in LIST_LRS[lrs](device)]
    got = ns.dropgrad_step.default(ws, gs, ls, 0.3, 0.2, 2, 7, 4, None, 3)
    for b in range(3):
        row = [l if l.dim() in (0, w.dim() - 1) else l[b] for l, w in zip(ls, ws)]
        want = ns.dropgrad_step.default([w[b] for w in ws], [g[b] for g in gs], row, 0.3, 0.2, 2, 7, 4 + b * (8 + 8))
        for x, y in zip(got, want):
            assert torch.equal(x[b], y)


def test_vmap_of_grad_through_a_list_regenerates_the_forward_noise(backend):
    """A list's backward under the vmap its forward ran under: every tensor's noise is its forward's
    (element b's list starts b list spans on), so each element's gradient is its own call's."""
    name, device = backend
    ws = [f64(3, 2, 3, seed=1, device=device), f64(3, 5, seed=2, device=device)]
    gs = [f64(3, 2, 3, seed=3, device=device), f64(3, 5, seed=4, device=device)]
    lrs = [f64(seed=5, device=device).abs(), f64(5, seed=6, device=device).abs()]  # a 0-d and a full lr, shared

    def loss(g, l, w, offset=4):
        out = dg.dropgrad_step(w, g, l, 0.2, seed=7, offset=offset, backend=name)
        return sum((o.pow(3)).sum() for o in out)

    got = vmap(grad(loss, argnums=(0, 1)), in_dims=(0, None, 0), randomness="different")(gs, lrs, ws)
    for b in range(3):
        want = grad(loss, argnums=(0, 1))([g[b] for g in gs], lrs, [w[b] for w in ws], offset=4 + b * (8 + 8))
        for x, y in zip(got[0], want[0]):  # d/dgrads: -lr * n * dL/dout
            assert torch.equal(x[b], y)
        for x, y in zip(got[1], want[1]):  # d/dlrs, per element
            torch.testing.assert_close(x[b], y, rtol=1e-14, atol=0)


def test_nested_vmap_of_a_list_folds_into_one_batch(backend):
    """vmap of vmap of dropgrad_step: one call, inner element j of outer element i at
    offset + (i * inner + j) * span(list)."""
    name, device = backend
    ws = [f64(2, 3, 5, seed=1, device=device), f64(2, 3, 2, seed=2, device=device)]
    gs = [f64(2, 3, 5, seed=3, device=device), f64(2, 3, 2, seed=4, device=device)]
    fn = lambda w, g: dg.dropgrad_step(w, g, 0.3, 0.2, seed=7, offset=8, backend=name)  # noqa: E731
    with CountOps() as count:
        got = vmap(vmap(fn, randomness="different"), randomness="different")(ws, gs)
    assert count.calls == ["dropgrad_step"]
    for i in range(2):
        for j in range(3):
            want = fn([w[i, j] for w in ws], [g[i, j] for g in gs]) if i == j == 0 else dg.dropgrad_step(
                [w[i, j] for w in ws], [g[i, j] for g in gs], 0.3, 0.2, seed=7, offset=8 + (3 * i + j) * 12,
                backend=name)
            for x, y in zip(got, want):
                assert torch.equal(x[i, j], y)


def test_vmap_under_grad_meta_batch_equals_task_loop(backend):
    """The integration's meta-batch helper: vmap over tasks with grad inside, second order."""
    name, device = backend
    params = mlp_params(device)
    tasks = [task(device) for _ in range(3)]
    tasks = [tuple(t[i] + 0.1 * k if t[i].is_floating_point() else t[i] for i in range(4)) for k, t in enumerate(tasks)]
    stacked = tuple(torch.stack([t[i] for t in tasks]) for i in range(4))

    def model(p, x):
        return F.linear(F.relu(F.linear(x, p["l1.weight"], p["l1.bias"])), p["l2.weight"], p["l2.bias"])

    def loss(p, x, y):
        return F.cross_entropy(model(p, x), y)

    inner = {k: params[k] for k in INNER}
    kwargs = dict(lr=0.4, p=0.2, steps=2, seed=9, backend=name)
    got = grad(lambda p: dfunc.meta_batch_loss(loss, p, *stacked, **kwargs))(inner)
    total = 0
    leaves = {k: v.clone().requires_grad_() for k, v in inner.items()}
    span_task = sum(span(v.numel()) for v in inner.values())
    for b, (xs, ys, xq, yq) in enumerate(tasks):
        fast = dict(leaves)
        for step in range(2):
            gs = torch.autograd.grad(loss(fast, xs, ys), list(fast.values()), create_graph=True)
            fast = dfunc.inner_step(fast, gs, 0.4, 0.2, seed=9, offset=(step * 3 + b) * span_task, backend=name)
        total = total + loss(fast, xq, yq)
    want = torch.autograd.grad(total / 3, list(leaves.values()))
    for k, w in zip(inner, want):
        torch.testing.assert_close(got[k], w, rtol=1e-12, atol=1e-14)


def test_meta_batch_helper_names_bad_arguments():
    params = {"w": torch.randn(3)}
    x = torch.randn(2, 4, 3)

    def loss(p, x, y):
        return (x @ p["w"] - y).pow(2).mean()

    for steps in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="steps"):
            dfunc.meta_batch_loss(loss, params, x, x[..., 0], x, x[..., 0], lr=0.1, p=0.1, steps=steps)
    with pytest.raises(ValueError, match="offset"):
        dfunc.inner_step(params, {"w": torch.randn(3)}, 0.1, 0.1, offset=3)
