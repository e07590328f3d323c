"""The dropgrad:: ops as PyTorch sees them: opcheck (schema, fake tensors, autograd registration,
AOT dispatch) and torch.compile(fullgraph=True) over them."""
import importlib.util
import os
import subprocess
import sys
import warnings

import pytest
import torch

import dropgrad_cuda as dg
from conftest import needs_emulator

OPS = dg.ops.OP_NAMES


def samples():
    w = lambda *s: torch.randn(*s, requires_grad=True)  # noqa: E731
    return [
        ("philox4x32_10", (torch.randint(0, 2**32, (5, 4)), torch.randint(0, 2**32, (5, 2)))),
        ("noise", (torch.empty(3, 5), 0.1, 2, 7, 0)),
        ("drop_grad", (w(3, 5), 0.1, 2, 7, 0)),
        ("drop_grad", (w(9), 0.2, 1, 2**40, 8)),
        ("dropgrad_update", (w(4, 4), w(4, 4), None, 0.1, 0.1, 2, 7, 0)),
        ("dropgrad_update", (w(4, 4), w(4, 4), torch.tensor(0.1, requires_grad=True), 0.0, 0.1, 1, 7, 0)),
        ("dropgrad_update", (w(4, 4), w(4, 4), w(4, 4), 0.0, 0.1, 2, 7, 4)),
        ("dropgrad_step", ([w(3), w(2, 2)], [w(3), w(2, 2)], [], 0.1, 0.2, 2, 7, 0)),
        ("dropgrad_step", ([w(3), w(2, 2)], [w(3), w(2, 2)], [w(3), w(2, 2)], 0.0, 0.2, 1, 7, 0)),
        # a batch of 2 lists: a per-list lr and one list's lr shared by both
        ("dropgrad_step", ([w(2, 3), w(2, 2, 2)], [w(2, 3), w(2, 2, 2)], [w(2, 3), w(2, 2)], 0.0, 0.2, 2, 7, 4, None, 2)),
        ("dropgrad_step_", ([torch.randn(3), torch.randn(2, 2)], [torch.randn(3), torch.randn(2, 2)], [], 0.1, 0.01,
                            0.2, 2, 7, 0)),
        ("dropgrad_step_", ([torch.randn(5).double()], [torch.randn(5).double()], [torch.rand(5).double()], 0.0, 0.0,
                            0.2, 1, 7, 4)),
        ("meta_dropout", (w(2, 3), w(2, 3), False, 7, 0)),
        ("meta_dropout", (w(2, 3), w(2, 3), True, 7, 0)),
        ("meta_dropout_backward", (w(2, 3), w(2, 3), w(2, 3), False, 7, 0)),
        ("meta_dropout_double_backward", (w(2, 3), w(2, 3), w(2, 3), w(2, 3), w(2, 3), False, 7, 0)),
        ("meta_dropout_double_backward", (w(4), w(4), w(4), w(4), w(4), True, 7, 4)),
    ]


def test_every_op_has_a_sample():
    assert sorted({name for name, _ in samples()}) == sorted(OPS)


def namespaces():
    yield pytest.param("dropgrad", id="cpp")
    yield pytest.param("dropgrad_triton", id="triton-interpreter", marks=pytest.mark.skipif(
        os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1"))
    yield pytest.param("dropgrad_emulated", id="cuda-emulated", marks=needs_emulator)


# Ops the bytes-moved model (and so the SASS predictions and the benchmarks' bandwidth) leaves out.
NO_BYTES_MODEL = {"philox4x32_10": "integer words, not a float op", "dropgrad_step_": "dropgrad_step's in-place form"}
NOT_DIFFERENTIABLE = {"philox4x32_10", "noise"}
NO_BATCHING = {"dropgrad_step_"}  # the optimizer's in-place step: refused under torch.func (tests/test_bad_input.py)


@pytest.mark.parametrize("namespace", list(namespaces()))
def test_every_op_is_in_every_list(namespace):
    """The schemas of csrc/ops.cpp are the one table of ops; everything else is derived from it or
    checked against it here: the Python list, each namespace's kernels, autograd, fakes and batching
    rules, the bytes-moved table, the Triton launches predicted for and the opcheck samples. A new op missing
    from any of them fails this test (docs/architecture.md lists where each lives)."""
    from dropgrad_cuda._table import ELEMENTS_MOVED
    from dropgrad_cuda.triton_kernels import configs

    if namespace == "dropgrad_triton":
        dg.ops._triton_ops()
    defined = {n.split("::")[1] for n in torch._C._dispatch_get_all_op_names() if n.split("::")[0] == namespace}
    extra = {"dropgrad": {"cuda_rng_state"}, "dropgrad_emulated": {"grid_limit", "launches"}}.get(namespace, set())
    assert defined == set(OPS) | extra
    for op in OPS:
        q = f"{namespace}::{op}"
        has = lambda key: torch._C._dispatch_has_kernel_for_dispatch_key(q, key)  # noqa: E731
        assert has("CPU") and has("FuncTorchBatched") == (op not in NO_BATCHING), q
        assert has("Autograd") == (op not in NOT_DIFFERENTIABLE), q
        assert torch._library.simple_registry.singleton.find(q).fake_impl.kernel is not None, q
    assert set(ELEMENTS_MOVED) | set(NO_BYTES_MODEL) == set(OPS) and not set(ELEMENTS_MOVED) & set(NO_BYTES_MODEL)
    assert set(configs.predicted()) == set(ELEMENTS_MOVED)


def test_the_reference_is_a_namespace_of_every_op():
    """backend="reference" is called like every kernel namespace: each op of the table, by the
    kernels' schema (its parameters' names, and the defaults of the trailing ones)."""
    import inspect

    from dropgrad_cuda import _reference_ops

    for op in OPS:
        fn = getattr(_reference_ops, op).default
        schema = getattr(torch.ops.dropgrad, op).default._schema
        params = inspect.signature(fn).parameters
        assert list(params) == [a.name for a in schema.arguments], op
        assert all((p.default is inspect.Parameter.empty) == (not a.has_default_value())
                   for p, a in zip(params.values(), schema.arguments)), op


@pytest.mark.parametrize("namespace", list(namespaces()))
@pytest.mark.parametrize("name,args", samples(), ids=[n for n, _ in samples()])
def test_opcheck(namespace, name, args):
    if namespace == "dropgrad_triton":
        dg.ops._triton_ops()
    torch.library.opcheck(getattr(getattr(torch.ops, namespace), name).default, args)


def test_compile_fullgraph_first_order():
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(8, 4, generator=g, requires_grad=True), torch.randn(8, 4, generator=g, requires_grad=True)

    def update(w, g):  # the compiled function: fused update and meta-dropout, forward and backward
        h = dg.meta_dropout(w, g, seed=5)
        return dg.dropgrad_update(w, h, 0.1, 0.2, "bernoulli", seed=9)

    compiled = torch.compile(update, fullgraph=True, backend="aot_eager")
    out, want = compiled(w, b), update(w, b)
    assert torch.equal(out, want)
    gw = torch.autograd.grad(out.sum(), [w, b])
    gw_want = torch.autograd.grad(want.sum(), [w, b])
    for x_, y_ in zip(gw, gw_want):
        assert torch.equal(x_, y_)
    # Inductor too, end to end on CPU.
    out2 = torch.compile(update, fullgraph=True)(w, b)
    assert torch.equal(out2, want)


def test_cuda_rng_state_has_a_fake_implementation():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        state = torch.ops.dropgrad.cuda_rng_state(torch.empty(5), 5)
    assert state.shape == (2,) and state.dtype == torch.int64


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and dg.cuda_kernels_built()),
                    reason="needs a CUDA GPU and the CUDA kernels")
def test_compile_with_seed_none_on_cuda_draws_fresh_noise():
    g = torch.randn(1000, device="cuda")
    fn = torch.compile(lambda g: dg.drop_grad(g, 0.2), fullgraph=True)
    torch.cuda.manual_seed(0)
    a, b = fn(g), fn(g)
    assert not torch.equal(a, b)
    torch.cuda.manual_seed(0)
    assert torch.equal(fn(g), a)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed (a CPU-only torch)")
@pytest.mark.parametrize("arch", [80, 90])
def test_triton_kernels_compile_ahead_of_time_without_spills(arch):
    """Every Triton kernel and configuration the host launches, compiled for sm_80/sm_90 with no GPU.
    Every configuration must compile with any Triton; no spills is the tuning of the Triton that
    requirements.txt pins, and another Triton's spills (scripts/compat.sh) are reported, not failed."""
    import triton

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-m", "dropgrad_cuda.triton_kernels.aot", "--arch", str(arch)],
                         capture_output=True, text=True, env=env, timeout=600)
    from dropgrad_cuda.triton_kernels.configs import configurations

    lines = [l for l in run.stdout.splitlines() if "registers" in l]
    assert len(lines) == len(list(configurations())) > 100, run.stdout + run.stderr
    spilled = [l for l in lines if "0 bytes spill stores, 0 bytes spill loads" not in l]
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "requirements.txt")) as fh:
        pinned = next(l.split("==")[1].strip() for l in fh if l.startswith("triton=="))
    if triton.__version__ == pinned:
        assert not spilled and run.returncode == 0 and f"sm_{arch}: 0 failed or spilled" in run.stdout, run.stdout
    elif spilled:
        warnings.warn(f"Triton {triton.__version__} (tuned on {pinned}) spills in: " + "; ".join(spilled))


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1")
def test_triton_launches_come_from_the_ahead_of_time_table():
    """ops.py launches only configurations of triton_kernels/configs.py, the table the AOT compile
    reads; logit_noise's (the update kernel in mode 3) was launched but never compiled on main.
    Every backend test launches through the same check, so drift fails the suite."""
    import triton.language as tl

    from dropgrad_cuda.triton_kernels import configs, kernels as K, ops as triton_ops

    mu, s = torch.randn(4, 3), torch.randn(4, 1)
    assert torch.equal(dg.logit_noise(mu, s, seed=3, backend="triton"), dg.logit_noise(mu, s, seed=3, backend="cpu"))
    logit = {"KIND": K.UPDATE, "MODE": 3, "LR_FULL": False, "ACC": tl.float32, "HAS_STATE": False}
    assert configs.key(K.elementwise_kernel, logit) in configs.LAUNCHABLE
    with pytest.raises(RuntimeError, match="not in triton_kernels/configs.py"):
        triton_ops._launch(K.elementwise_kernel, (1,), **{**logit, "MODE": 7})


# ---------------------------------------------------------------- compile and export with fresh noise
def test_compile_seed_none_one_graph_fresh_noise_reproducible():
    """A whole first-order training step (MetaDropout blocks, torch.func.grad, a fused DropGrad
    update, the query loss) compiles into one graph that draws fresh noise on every call."""
    from torch import nn
    from torch.func import functional_call, grad

    from dropgrad_cuda import nn as dnn

    torch.manual_seed(0)
    model = nn.Sequential(dnn.MetaDropout(nn.Linear(4, 8)), nn.ReLU(), dnn.MetaDropout(nn.Linear(8, 8)), nn.ReLU(),
                          nn.Linear(8, 3))
    inner = dict(dnn.inner_parameters(model))
    x, y = torch.randn(10, 4), torch.arange(10) % 3

    def step(params, x, y):
        def loss(p):
            return torch.nn.functional.cross_entropy(functional_call(model, p, (x,)), y)
        g = grad(loss)(params)
        fast = dg.dropgrad_step(list(params.values()), [v.detach() for v in g.values()], 0.1, 0.2)
        return loss(dict(zip(params, fast)))

    graphs = []
    compiled = torch.compile(step, fullgraph=True, backend=lambda gm, ex: graphs.append(gm) or gm.forward)
    torch.manual_seed(1)
    first = [compiled(inner, x, y) for _ in range(4)]
    torch.manual_seed(1)
    again = [compiled(inner, x, y) for _ in range(4)]
    assert len(graphs) == 1
    assert len({v.item() for v in first}) == 4  # fresh noise every step
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # reproducible under torch.manual_seed
    first[0].backward()
    assert model[0].generator.net.weight.grad.abs().sum() > 0


def test_compile_a_changing_seed_or_lr_does_not_recompile_every_step():
    w, g = torch.randn(8), torch.randn(8)
    graphs = []
    fn = torch.compile(lambda w, g, lr, seed: dg.dropgrad_update(w, g, lr, 0.2, seed=seed), fullgraph=True,
                       backend=lambda gm, ex: graphs.append(gm) or gm.forward)
    for i in range(6):
        out = fn(w, g, 0.1 * (i + 1), 100 + i)
        assert torch.equal(out, dg.dropgrad_update(w, g, 0.1 * (i + 1), 0.2, seed=100 + i))
    assert len(graphs) <= 2  # dynamo's one automatic-dynamic recompile at the second value, then none


def test_export_a_trained_model_inside_query_pass_and_in_eval():
    from torch import nn

    from dropgrad_cuda import nn as dnn

    torch.manual_seed(0)
    model = nn.Sequential(dnn.MetaDropout(nn.Conv2d(1, 4, 3, padding=1)), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5))
    x = torch.randn(2, 1, 4, 4)
    with dnn.query_pass(model):
        want = model(x)
        exported = torch.export.export(model, (x,))
    assert torch.equal(exported.module()(x), want)
    model.eval()
    assert torch.equal(torch.export.export(model, (x,)).module()(x), want)


@pytest.mark.parametrize("call", [
    lambda w: dg.dropgrad_update(w, w, 0.1, 0.0),
    lambda w: dg.dropgrad_update(w, w, 0.1, 0.3, "none"),
    lambda w: dg.drop_grad(w, 0.0, "bernoulli"),
    lambda w: dg.dropgrad_step([w], [w], 0.1, 0.2, "none"),
    lambda w: dg.meta_dropout(w, w, deterministic=True),
    lambda w: dg.logit_noise(w, w[:, :1], deterministic=True),
], ids=["p0", "none", "drop_grad-p0", "step-none", "meta_dropout-det", "logit_noise-det"])
def test_no_noise_draws_nothing_from_the_generator(call):
    w = torch.randn(3, 4)
    torch.manual_seed(0)
    want = torch.rand(5)
    torch.manual_seed(0)
    call(w)
    assert torch.equal(torch.rand(5), want)
    torch.manual_seed(0)
    dg.dropgrad_update(w, w, 0.1, 0.2)  # noise on: one draw, as before
    assert not torch.equal(torch.rand(5), want)
