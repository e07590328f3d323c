"""The drop-ins against their libraries' stock updates (exact without noise) and against the
reference backend with the same seeds (noise, and second-order meta-gradients).

The learn2learn and torchmeta stock updates are transcribed below from their sources (neither
installs with torch 2.14.1 on Python 3.11); higher is used as is where it is installed (the tests
that need it skip without it; DropGradSGD itself does not need it)."""
import copy
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import dropgrad_cuda as dg
from dropgrad_cuda.integrations import func, learn2learn as l2l, torchmeta
from dropgrad_cuda.optim import DropGradSGD

# the meta-gradients: ATen's convolutions and matrix products
pytestmark = pytest.mark.numerics

try:
    import higher

    import dropgrad_cuda.integrations.higher  # noqa: F401  registers DropGradSGD's differentiable twin
except ImportError:  # an optional dependency: only the tests that run it skip
    higher = None
needs_higher = pytest.mark.skipif(higher is None, reason="needs the higher package (pip install higher)")


class Net(nn.Module):
    """Conv + linear with a tied pair of linear weights (a shared parameter, updated once)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(64, 6)
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(6, 6)
        self.b.weight = self.a.weight
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.conv(x)), 2).flatten(1)
        return self.out(torch.tanh(self.b(torch.tanh(self.a(self.fc(h))))))


def task(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs, xq = (torch.randn(10, 1, 8, 8, generator=g, dtype=dtype) for _ in range(2))
    ys, yq = (torch.randint(0, 3, (10,), generator=g) for _ in range(2))
    return xs, ys, xq, yq


def net(dtype):
    torch.manual_seed(0)
    return Net().to(dtype)


# ------------------------------------------------------------ stock updates, transcribed
def stock_l2l_clone(module, memo=None):  # learn2learn.utils.clone_module (parameters only)
    memo = {} if memo is None else memo
    clone = module.__new__(type(module))
    clone.__dict__ = module.__dict__.copy()
    clone._parameters = clone._parameters.copy()
    clone._modules = clone._modules.copy()
    for k, w in module._parameters.items():
        if w is not None:
            if w.data_ptr() not in memo:
                memo[w.data_ptr()] = w.clone()
            clone._parameters[k] = memo[w.data_ptr()]
    for k in clone._modules:
        clone._modules[k] = stock_l2l_clone(module._modules[k], memo)
    return clone


def stock_l2l_update_module(module, memo=None):  # learn2learn.utils.update_module
    memo = {} if memo is None else memo
    for k, w in module._parameters.items():
        if w in memo:
            module._parameters[k] = memo[w]
        elif w is not None and getattr(w, "update", None) is not None:
            updated = w + w.update
            w.update = None
            memo[w] = updated
            module._parameters[k] = updated
    for k in module._modules:
        module._modules[k] = stock_l2l_update_module(module._modules[k], memo)
    return module


def stock_l2l_maml_update(model, lr, grads):  # learn2learn.algorithms.maml.maml_update
    for w, g in zip(model.parameters(), grads):
        if g is not None:
            w.update = -lr * g
    return stock_l2l_update_module(model)


def stock_l2l_meta_sgd_update(model, lrs, grads):  # learn2learn.algorithms.meta_sgd.meta_sgd_update
    for w, lr, g in zip(model.parameters(), lrs, grads):
        if g is not None:
            w.update = -lr * g
    return stock_l2l_update_module(model)


def stock_torchmeta_update(model, loss, params, step_size, first_order=False):  # torchmeta.utils.gradient_update_parameters
    grads = torch.autograd.grad(loss, params.values(), create_graph=not first_order)
    if isinstance(step_size, dict):
        return OrderedDict((n, w - step_size[n] * g) for (n, w), g in zip(params.items(), grads))
    return OrderedDict((n, w - step_size * g) for (n, w), g in zip(params.items(), grads))


# ------------------------------------------------------------ one MAML run per integration
STEPS = 2


def run_func(model, data, noise, backend, lr_form="float", first_order=False):
    xs, ys, xq, yq = data
    params = dict(model.named_parameters())
    lr = {"float": 0.1,
          "metasgd": {n: torch.full_like(w, 0.1).requires_grad_() for n, w in params.items()},
          "lslr": {n: torch.tensor([0.1, 0.05], dtype=w.dtype, requires_grad=True) for n, w in params.items()}}[lr_form]
    fast = params
    for k in range(STEPS):
        loss = F.cross_entropy(functional_call(model, fast, (xs,)), ys)
        grads = func.grads_of(loss, fast, first_order=first_order)
        if noise is None:  # the stock torch.func update
            l = {n: (lr[n][k] if lr_form == "lslr" else lr[n]) for n in fast} if lr_form != "float" else None
            fast = {n: w - (lr if l is None else l[n]) * grads[n] for n, w in fast.items()}
        else:
            fast = func.inner_step(fast, grads, lr, *noise, step=k if lr_form == "lslr" else None,
                                   first_order=first_order, backend=backend)
    return fast, F.cross_entropy(functional_call(model, fast, (xq,)), yq)


def run_torchmeta(model, data, noise, backend, lr_form="float"):
    xs, ys, xq, yq = data
    fast = OrderedDict(model.named_parameters())
    step_size = 0.1 if lr_form == "float" else {n: 0.1 * (i + 1) for i, n in enumerate(fast)}
    for _ in range(STEPS):
        loss = F.cross_entropy(functional_call(model, fast, (xs,)), ys)
        if noise is None:
            fast = stock_torchmeta_update(model, loss, fast, step_size)
        else:
            fast = torchmeta.gradient_update_parameters(model, loss, fast, step_size, p=noise[0], mode=noise[1],
                                                        backend=backend)
    return dict(fast), F.cross_entropy(functional_call(model, fast, (xq,)), yq)


def run_l2l(model, data, noise, backend, lr_form="float"):
    xs, ys, xq, yq = data
    learner = stock_l2l_clone(model)
    lrs = [torch.full_like(w, 0.1).requires_grad_() for w in model.parameters()] if lr_form == "metasgd" else None
    for _ in range(STEPS):
        grads = torch.autograd.grad(F.cross_entropy(learner(xs), ys), list(learner.parameters()), create_graph=True)
        if noise is None:
            learner = (stock_l2l_meta_sgd_update(learner, lrs, grads) if lrs else stock_l2l_maml_update(learner, 0.1, grads))
        elif lrs:
            learner = l2l.meta_sgd_update(learner, lrs, grads, *noise, backend=backend)
        else:
            learner = l2l.maml_update(learner, 0.1, grads, *noise, backend=backend)
    assert learner.a.weight is learner.b.weight  # the shared parameter stays shared, updated once
    return dict(learner.named_parameters()), F.cross_entropy(learner(xq), yq)


def run_higher(model, data, noise, backend, lr_form="float"):
    xs, ys, xq, yq = data
    opt = (torch.optim.SGD(model.parameters(), lr=0.1) if noise is None
           else DropGradSGD(model.parameters(), lr=0.1, p=noise[0], mode=noise[1], backend=backend))
    with higher.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
        for _ in range(STEPS):
            diffopt.step(F.cross_entropy(fmodel(xs), ys))
        fast = dict(zip((n for n, _ in model.named_parameters()), fmodel.parameters()))
        return fast, F.cross_entropy(fmodel(xq), yq)


RUNS = {"func": (run_func, ["float", "metasgd", "lslr"]), "torchmeta": (run_torchmeta, ["float", "dict"]),
        "learn2learn": (run_l2l, ["float", "metasgd"]), "higher": (run_higher, ["float"])}
CASES = [pytest.param(k, f, marks=[needs_higher] if k == "higher" else []) for k, (_, forms) in RUNS.items()
         for f in forms]


def outcome(which, lr_form, noise, backend, dtype, seed=1):
    model = net(dtype)
    torch.manual_seed(seed)  # seed=None: each call draws its seed from torch's generator
    fast, q = RUNS[which][0](model, task(dtype), noise, backend, lr_form)
    meta = torch.autograd.grad(q, list(model.parameters()))
    return {n: w.detach() for n, w in fast.items()}, meta


@pytest.mark.parametrize("which,lr_form", CASES)
@pytest.mark.parametrize("off", [(0.0, "gaussian"), (0.3, "none"), (0.0, "bernoulli")], ids=["p0", "none", "p0-bern"])
def test_without_noise_is_the_stock_update_exactly(which, lr_form, off):
    stock_fast, stock_meta = outcome(which, lr_form, None, None, torch.float32)
    fast, meta = outcome(which, lr_form, off, "auto", torch.float32)
    for n in stock_fast:
        assert torch.equal(fast[n], stock_fast[n]), n
    for a, b in zip(meta, stock_meta):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)  # backward sums in a different order


@pytest.mark.parametrize("which,lr_form", CASES)
@pytest.mark.parametrize("mode", ["gaussian", "bernoulli"])
def test_noise_equals_the_reference_path_to_second_order(which, lr_form, mode):
    fast, meta = outcome(which, lr_form, (0.2, mode), "cpu", torch.float64)
    ref_fast, ref_meta = outcome(which, lr_form, (0.2, mode), "reference", torch.float64)
    stock_fast, _ = outcome(which, lr_form, None, None, torch.float64)
    for n in fast:
        torch.testing.assert_close(fast[n], ref_fast[n], rtol=1e-12, atol=1e-14)
    assert any(not torch.allclose(fast[n], stock_fast[n]) for n in fast)  # the noise did something
    for a, b in zip(meta, ref_meta):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_first_order_detaches_the_gradients():
    model, data = net(torch.float64), task(torch.float64)
    torch.manual_seed(1)
    fast, q = run_func(model, data, (0.2, "gaussian"), "cpu", first_order=True)
    meta = torch.autograd.grad(q, list(model.parameters()), retain_graph=True)
    # First-order MAML: the meta-gradient is the query gradient at the adapted parameters.
    at_fast = torch.autograd.grad(q, list(fast.values()))
    for a, b in zip(meta, at_fast):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    torch.manual_seed(1)  # the same noise, second order: a different meta-gradient
    _, q2 = run_func(model, data, (0.2, "gaussian"), "cpu")
    meta2 = torch.autograd.grad(q2, list(model.parameters()))
    assert not all(torch.allclose(a, b) for a, b in zip(meta, meta2))


def test_evaluation_mode_turns_the_noise_off():
    model, (xs, ys, _, _) = net(torch.float32), task(torch.float32)
    grads = torch.autograd.grad(F.cross_entropy(model(xs), ys), list(model.parameters()))
    stock = stock_l2l_maml_update(stock_l2l_clone(model), 0.1, grads)
    model.eval()
    ours = l2l.maml_update(stock_l2l_clone(model), 0.1, grads, 0.5, "bernoulli")
    for a, b in zip(ours.parameters(), stock.parameters()):
        assert torch.equal(a, b)
    params = dict(model.named_parameters())
    out = func.inner_step(params, dict(zip(params, grads)), 0.1, 0.5, training=False)
    assert all(torch.equal(out[n], params[n] - 0.1 * g) for n, g in zip(params, grads))


@needs_higher
def test_higher_picks_up_the_registered_optimizer():
    model = net(torch.float32)
    with higher.innerloop_ctx(model, DropGradSGD(model.parameters(), lr=0.1)) as (_, diffopt):
        assert type(diffopt).__name__ == "DifferentiableDropGradSGD"


@pytest.mark.parametrize("options", [{}, {"weight_decay": 0.01}, {"weight_decay": 0.01, "maximize": True},
                                     {"lr": torch.tensor(0.05)}], ids=["plain", "wd", "maximize-wd", "tensor-lr"])
def test_dropgrad_sgd_as_a_plain_optimizer(options):
    """Without momentum: one in-place w -= lr * ((±g + wd * w) * n) into the parameters' own storage."""
    model = net(torch.float32)
    xs, ys, _, _ = task(torch.float32)
    before = [w.detach().clone() for w in model.parameters()]
    ptrs = [w.data_ptr() for w in model.parameters()]
    F.cross_entropy(model(xs), ys).backward()
    opts = {"lr": 0.1, **options}
    opt = DropGradSGD(model.parameters(), p=0.2, seed=11, **opts)
    opt.step()
    sign = -1 if options.get("maximize") else 1
    want = [w.clone() for w in before]
    dg.reference.dropgrad_step_(want, [sign * w.grad for w in model.parameters()], opts["lr"], 0.2, "gaussian",
                                seed=11, weight_decay=options.get("weight_decay", 0.0))
    for w, v, ptr in zip(model.parameters(), want, ptrs):
        assert torch.equal(w.detach(), v) and w.data_ptr() == ptr


def test_integrations_reject_mismatched_inputs():
    model = net(torch.float32)
    params = dict(model.named_parameters())
    with pytest.raises(ValueError, match="one entry per parameter"):
        l2l.maml_update(model, 0.1, [None], 0.1)
    with pytest.raises(ValueError, match="not in params"):
        func.inner_step(params, {"nope": torch.zeros(1)}, 0.1, 0.1)
    with pytest.raises(KeyError, match="no entry for parameter"):
        func.inner_step(params, dict(params), {"conv.weight": 0.1}, 0.1)
    with pytest.raises(ValueError, match="indexable by step"):
        func.inner_step(params, dict(params), {n: 0.1 for n in params}, 0.1, step=0)
    with pytest.raises(ValueError, match="p must be in"):
        DropGradSGD(model.parameters(), lr=0.1, p=1.0)
    with pytest.raises(ValueError, match="mode must be"):
        DropGradSGD(model.parameters(), lr=0.1, mode="dropout")
    with pytest.raises(TypeError, match="params must be a dict"):
        func.inner_step(list(params.values()), dict(params), 0.1, 0.1)


# ------------------------------------------------------------ higher: evaluation mode, query passes
@needs_higher
def test_higher_evaluation_mode_gives_the_stock_update():
    model, (xs, ys, _, _) = net(torch.float32), task(torch.float32)
    model.eval()
    steps = []
    for opt in (DropGradSGD(model.parameters(), lr=0.1, p=0.5), torch.optim.SGD(model.parameters(), lr=0.1)):
        with higher.innerloop_ctx(model, opt, copy_initial_weights=True) as (fmodel, diffopt):
            diffopt.step(F.cross_entropy(fmodel(xs), ys))
            steps.append([w.detach() for w in fmodel.parameters()])
    for a, b in zip(*steps):
        assert torch.equal(a, b)


@needs_higher
@pytest.mark.parametrize("seed", [None, 3])
def test_higher_inner_loops_get_fresh_noise_per_task_and_step(seed):
    """Each inner loop (task) and step gets its own noise: with an int seed from the optimizer's
    stream (so a run reproduces), with seed=None from torch's generator (main: an int seed gave
    every task and step the same noise)."""
    model, (xs, ys, _, _) = net(torch.float32), task(torch.float32)

    def run():
        torch.manual_seed(1)
        opt, fast = DropGradSGD(model.parameters(), lr=0.1, p=0.2, seed=seed), []
        for _ in range(2):  # two tasks from the same start, two steps each
            with higher.innerloop_ctx(model, opt, copy_initial_weights=True) as (fmodel, diffopt):
                steps = []
                for _ in range(2):
                    diffopt.step(F.cross_entropy(fmodel(xs), ys))
                    steps.append(torch.cat([w.detach().flatten() for w in fmodel.parameters()]))
                fast.append(steps)
        return fast

    first, again = run(), run()
    assert not torch.equal(first[0][0], first[1][0])  # another task's first step: other noise
    assert all(torch.equal(a, b) for x, y in zip(first, again) for a, b in zip(x, y))  # one run per seed


@needs_higher
def test_query_pass_on_the_users_model_reaches_highers_fmodel():
    from dropgrad_cuda import nn as dnn
    torch.manual_seed(0)
    model = nn.Sequential(dnn.MetaDropout(nn.Linear(4, 6)), nn.ReLU(), nn.Linear(6, 3))
    x = torch.randn(5, 4)
    with higher.innerloop_ctx(model, DropGradSGD(dnn.inner_parameters(model).values(), lr=0.1)) as (fmodel, _):
        assert not torch.equal(fmodel(x), fmodel(x))  # noisy support passes
        with dnn.query_pass(model):
            assert torch.equal(fmodel(x), fmodel(x))
            with torch.no_grad():
                want = model(x)
            assert torch.equal(fmodel(x), want)


# ------------------------------------------------------------ DropGradSGD as torch.optim.SGD
@pytest.mark.parametrize("options", [{}, {"momentum": 0.9}, {"momentum": 0.9, "nesterov": True},
                                     {"momentum": 0.5, "dampening": 0.3, "weight_decay": 0.01},
                                     {"maximize": True, "weight_decay": 0.1}],
                         ids=["plain", "momentum", "nesterov", "dampening-wd", "maximize-wd"])
def test_dropgrad_sgd_without_noise_is_torch_sgd_bit_for_bit(options):
    torch.manual_seed(0)
    w1 = torch.randn(100_000, requires_grad=True)
    w2 = w1.detach().clone().requires_grad_()
    stock, ours = torch.optim.SGD([w1], lr=0.1, **options), DropGradSGD([w2], lr=0.1, p=0.0, **options)
    for _ in range(3):
        g = torch.randn(100_000)
        w1.grad, w2.grad = g.clone(), g.clone()
        stock.step()
        ours.step()
    assert torch.equal(w1, w2)


@pytest.mark.parametrize("options", [{"momentum": 0.9}, {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
                                     {"momentum": 0.5, "maximize": True, "weight_decay": 0.1}],
                         ids=["momentum", "nesterov-wd", "maximize-wd"])
def test_dropgrad_sgd_noise_enters_sgds_own_rule(options):
    """With momentum, the noisy step is torch.optim.SGD's step on d = (±g + wd * w) * n (n the
    contract's noise); without, the fused w - lr * d (test_dropgrad_sgd_as_a_plain_optimizer)."""
    torch.manual_seed(0)
    w1 = torch.randn(1000, requires_grad=True)
    w2 = w1.detach().clone().requires_grad_()
    wd, sign = options.get("weight_decay", 0.0), -1 if options.get("maximize") else 1
    plain = {k: v for k, v in options.items() if k not in ("weight_decay", "maximize")}
    stock, ours = torch.optim.SGD([w1], lr=0.1, **plain), DropGradSGD([w2], lr=0.1, p=0.2, seed=5, **options)
    for step in range(2):  # the optimizer's stream reads on: step k's noise starts k spans in
        g = torch.randn(1000)
        w1.grad = dg.drop_grad(sign * g + wd * w1.detach(), 0.2, seed=5, offset=1000 * step)
        w2.grad = g
        stock.step()
        ours.step()
    assert torch.equal(w1, w2)


def test_dropgrad_sgd_loads_a_torch_sgd_state_and_checks_added_groups():
    w = torch.randn(10, requires_grad=True)
    w.grad = torch.randn(10)
    ours = DropGradSGD([w], lr=0.1, p=0.2)
    ours.load_state_dict(torch.optim.SGD([w], lr=0.05).state_dict())
    ours.step()  # main: KeyError 'p'
    assert ours.param_groups[0]["p"] == 0.2 and ours.param_groups[0]["lr"] == 0.05
    with pytest.raises(ValueError, match="p must be in"):
        ours.add_param_group({"params": [torch.randn(2, requires_grad=True)], "p": 1.5})
    with pytest.raises(ValueError, match="mode"):
        ours.add_param_group({"params": [torch.randn(2, requires_grad=True)], "mode": "uniform"})
    w.grad = torch.randn(10)
    before = w.detach().clone()
    DropGradSGD([w], lr=0.1, p=0.2, seed=3, maximize=True, weight_decay=0.1).step()  # fused, no momentum
    d = -w.grad + 0.1 * before
    assert torch.equal(w.detach(), dg.reference.dropgrad_update(before, d, 0.1, 0.2, seed=3))
    s = torch.randn(4, 3, requires_grad=True)
    s.grad = torch.randn(4, 3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        DropGradSGD([s], lr=0.1).step()


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_dropgrad_sgd_takes_every_64_bit_seed(momentum):
    """A seed in [2**63, 2**64) is the same stream with and without momentum (main: refused with
    momentum, 'seed must be in [0, 2**64), got -9223372036854775803')."""
    w = torch.randn(10, requires_grad=True)
    w.grad = torch.randn(10)
    before, grad = w.detach().clone(), w.grad.clone()
    DropGradSGD([w], lr=0.05, p=0.2, momentum=momentum, seed=2**63 + 5).step(lambda: None)
    R = dg.reference
    # The first momentum step's buffer is the noisy gradient itself, added by SGD's own add_.
    want = (before.add(R.drop_grad(grad, 0.2, seed=2**63 + 5), alpha=-0.05) if momentum
            else R.dropgrad_update(before, grad, 0.05, 0.2, seed=2**63 + 5))
    assert torch.equal(w.detach(), want)


def test_dropgrad_sgd_copies_pickles_and_saves_like_torch_sgd(tmp_path):
    import io
    import pickle
    w = torch.randn(10, requires_grad=True)
    opt = DropGradSGD([w], lr=0.05, p=0.15, mode="bernoulli", momentum=0.9, seed=4)
    opt.add_param_group({"params": [torch.randn(3, requires_grad=True)], "p": 0.3})
    buf = io.BytesIO()
    torch.save(opt, buf)
    buf.seek(0)
    for other in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt)), torch.load(buf, weights_only=False)):
        assert type(other) is DropGradSGD
        assert [{k: v for k, v in g.items() if k != "params"} for g in other.param_groups] == \
               [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
        other.add_param_group({"params": [torch.randn(2, requires_grad=True)]})  # the constructor's noise defaults
        assert other.param_groups[-1]["p"] == 0.15 and other.param_groups[-1]["mode"] == "bernoulli"


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("p", [0.0, 0.2])
def test_dropgrad_sgd_refuses_a_parameter_listed_twice(momentum, p):
    """torch.optim only warns about a duplicate parameter and steps it twice; DropGradSGD refuses it
    when the group is added, on every path (main: refused only by the fused step without momentum;
    with momentum the parameter was silently updated twice)."""
    w, v = torch.randn(10, requires_grad=True), torch.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match=r"params\[2\] is params\[0\]"):
        DropGradSGD([w, v, w], lr=0.1, p=p, momentum=momentum)
    opt = DropGradSGD([v], lr=0.1, p=p, momentum=momentum)
    with pytest.raises(ValueError, match=r"params\[1\] is params\[0\]"):
        opt.add_param_group({"params": [w, w]})
    assert len(opt.param_groups) == 1
