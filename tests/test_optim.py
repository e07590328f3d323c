"""DropGradSGD where people train: SGD's own signature and options, a seeded stream that is fresh
every step and resumes from a checkpoint, identical replicas under DistributedDataParallel, and
SGD's own step, bit for bit, whenever the noise is off."""
import copy
import inspect
import os
import socket
import subprocess
import sys

import pytest
import torch

import dropgrad_cuda as dg
from dropgrad_cuda.optim import DropGradSGD

R = dg.reference


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(6, 5, generator=g, requires_grad=True), torch.randn(7, generator=g, requires_grad=True)]


def _grads(step, like):
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(w.shape, generator=g) for w in like]


def _train(opt, params, steps, start=0):
    for k in range(start, start + steps):
        for w, g in zip(params, _grads(k, params)):
            w.grad = g
        opt.step()
    return [w.detach().clone() for w in params]


# ------------------------------------------------------------ SGD's signature
def test_positional_arguments_mean_what_they_mean_to_sgd():
    """main: DropGradSGD(params, 0.1, 0.9) set p = 0.9 and momentum 0."""
    opt = DropGradSGD(_params(), 0.1, 0.9, 0.1, 0.01, False)
    g = opt.param_groups[0]
    assert (g["lr"], g["momentum"], g["dampening"], g["weight_decay"], g["nesterov"], g["p"]) == \
           (0.1, 0.9, 0.1, 0.01, False, 0.1)
    assert DropGradSGD(_params()).param_groups[0]["lr"] == torch.optim.SGD(_params()).param_groups[0]["lr"]
    ours, sgds = inspect.signature(DropGradSGD).parameters, inspect.signature(torch.optim.SGD).parameters
    positional = [n for n, q in sgds.items() if q.kind is q.POSITIONAL_OR_KEYWORD]
    assert [n for n, q in ours.items() if q.kind is q.POSITIONAL_OR_KEYWORD] == positional
    assert all(ours[n].default == sgds[n].default for n in positional)
    assert all(q.kind is q.KEYWORD_ONLY for n, q in ours.items() if n in ("p", "mode", "seed", "training", "backend"))
    with pytest.raises(TypeError, match="unexpected keyword"):
        DropGradSGD(_params(), 0.1, nonsense=1)


def _sgd_keywords():
    """Every keyword-only option of the installed torch's SGD with a non-default value to try."""
    values = dict(maximize=True, foreach=True, differentiable=True, fused=True)
    kw = [n for n, q in inspect.signature(torch.optim.SGD).parameters.items() if q.kind is q.KEYWORD_ONLY]
    assert set(kw) <= set(values), f"SGD takes options this test does not know: {set(kw) - set(values)}"
    return [{n: values[n]} for n in kw]


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("extra", [{}, *_sgd_keywords()], ids=lambda e: ",".join(e) or "defaults")
@pytest.mark.parametrize("options", [{}, {"momentum": 0.9, "nesterov": True}, {"momentum": 0.5, "dampening": 0.3},
                                     {"weight_decay": 0.1}], ids=["plain", "nesterov", "dampening", "wd"])
@pytest.mark.parametrize("off", [{"p": 0.0}, {"mode": "none"}, {"training": False}], ids=["p0", "none", "eval"])
def test_noise_off_is_sgds_own_step_bit_for_bit(sparse, extra, options, off):
    """Every SGD option of the installed torch with every way of turning the noise off, sparse
    gradients included (main: sparse gradients raised, foreach/fused/differentiable a TypeError):
    the same parameters, or the same exception where SGD itself refuses the configuration."""
    a, b = _params(), _params()
    kw = dict(lr=0.1, **options, **extra)

    def run(make, params):
        try:
            opt = make(params)
            for k in range(3):
                for w, g in zip(params, _grads(k, params)):
                    w.grad = g.to_sparse() if sparse else g
                opt.step()
        except (RuntimeError, ValueError) as e:
            return type(e), str(e)
        return None

    refused = run(lambda ps: torch.optim.SGD(ps, **kw), a)
    assert run(lambda ps: DropGradSGD(ps, **kw, **off), b) == refused
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_noise_on_refuses_what_it_cannot_hold():
    with pytest.raises(ValueError, match="differentiable=True needs the noise off"):
        DropGradSGD(_params(), 0.1, differentiable=True)
    w = torch.randn(4, 3, requires_grad=True)
    w.grad = torch.randn(4, 3).to_sparse()
    before = w.detach().clone()
    with pytest.raises(RuntimeError, match="sparse gradients need the noise off"):
        DropGradSGD([w], 0.1, momentum=0.9).step()
    assert torch.equal(w.detach(), before)


@pytest.mark.parametrize("extra", [{"foreach": True}, {"foreach": False}, {"fused": True}], ids=str)
def test_sgd_options_are_honoured_with_the_noise_on(extra):
    """With momentum the noisy step is SGD's own (with its foreach or fused kernel) on the noisy
    direction; without, the fused in-place pass."""
    for momentum in (0.0, 0.9):
        a, b = _params(), _params()
        stock, ours = torch.optim.SGD(a, 0.1, momentum, **extra), DropGradSGD(b, 0.1, momentum, seed=7, **extra)
        for k in range(2):
            grads = _grads(k, a)
            offsets = R.stream_offsets([w.numel() for w in a], offset=k * 40)  # spans 32 + 8 a step
            for wa, wb, g, o in zip(a, b, grads, offsets):
                wa.grad, wb.grad = R.drop_grad(g, 0.1, seed=7, offset=o), g
            if momentum:
                stock.step()
            else:
                with torch.no_grad():
                    R.dropgrad_step_(a, grads, 0.1, 0.1, seed=7, offset=k * 40)
            ours.step()
        assert all(torch.equal(x, y) for x, y in zip(a, b))


# ------------------------------------------------------------ a seed seeds a stream
@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("mode", ["gaussian", "bernoulli"])
def test_a_seed_gives_fresh_noise_every_step_and_one_run(mode, momentum):
    """main: with seed=5 every step applied step 1's noise, element for element."""
    params = _params()
    opt = DropGradSGD(params, 0.1, momentum, p=0.2, mode=mode, seed=5)
    g = _grads(0, params)
    deltas = []
    for _ in range(3):  # the same gradient every step: a frozen mask would repeat the update
        before = [w.detach().clone() for w in params]
        for w, gi in zip(params, g):
            w.grad = gi.clone()
        opt.step()
        deltas.append(torch.cat([(w.detach() - b).flatten() for w, b in zip(params, before)]))
    if momentum == 0:
        assert not torch.equal(deltas[0], deltas[1]) and not torch.equal(deltas[1], deltas[2])
        want = _params()  # step k: the contract's noise from offset k * 40 (spans 32 + 8)
        for k in range(3):
            R.dropgrad_step_(want, g, 0.1, 0.2, mode, seed=5, offset=40 * k)
        assert all(torch.equal(w.detach(), v) for w, v in zip(params, want))
    again = _params()
    _train(DropGradSGD(again, 0.1, momentum, p=0.2, mode=mode, seed=5), again, 3)
    other = _params()
    _train(DropGradSGD(other, 0.1, momentum, p=0.2, mode=mode, seed=5), other, 3)
    assert all(torch.equal(x, y) for x, y in zip(again, other))


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("seed", [None, 2**64 - 3])
@pytest.mark.parametrize("checkpoint_at", [0, 2])
def test_a_run_resumed_from_a_checkpoint_continues_the_stream(seed, momentum, checkpoint_at):
    """As torch users resume: the model's and the optimizer's state_dict and torch's RNG state, all
    through torch.save; the resumed run is the uninterrupted one, bit for bit."""
    import io
    torch.manual_seed(3)
    full = _params()
    _train(DropGradSGD(full, 0.1, momentum, p=0.2, seed=seed), full, 4)

    torch.manual_seed(3)
    first = _params()
    opt = DropGradSGD(first, 0.1, momentum, p=0.2, seed=seed)
    _train(opt, first, checkpoint_at)
    buf = io.BytesIO()
    torch.save(dict(params=[w.detach() for w in first], opt=opt.state_dict(), rng=torch.get_rng_state()), buf)
    torch.manual_seed(12345)  # whatever the process did meanwhile
    torch.randn(100)
    buf.seek(0)
    ckpt = torch.load(buf)
    resumed = [w.clone().requires_grad_() for w in ckpt["params"]]
    opt2 = DropGradSGD(resumed, 0.1, momentum, p=0.2, seed=seed)
    opt2.load_state_dict(ckpt["opt"])
    torch.set_rng_state(ckpt["rng"])
    _train(opt2, resumed, 4 - checkpoint_at, start=checkpoint_at)
    assert all(torch.equal(x, y) for x, y in zip(full, resumed))


def test_seed_none_follows_torch_manual_seed_and_copies_carry_the_stream():
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        params = _params()
        runs.append(_train(DropGradSGD(params, 0.1, p=0.2), params, 2))
    assert all(torch.equal(x, y) for x, y in zip(*runs))
    params = _params()
    opt = DropGradSGD(params, 0.1, p=0.2, seed=9)
    _train(opt, params, 1)
    twin_params = [w.detach().clone().requires_grad_() for w in params]
    twin = copy.deepcopy(opt)
    twin.param_groups[0]["params"] = twin_params
    assert twin.noise_stream.state_dict() == opt.noise_stream.state_dict() == dict(seed=9, offset=40)
    _train(opt, params, 1, start=1)
    _train(twin, twin_params, 1, start=1)
    assert all(torch.equal(x, y) for x, y in zip(params, twin_params))


# ------------------------------------------------------------ DistributedDataParallel
_DDP_WORKER = r"""
import json, os, sys, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from dropgrad_cuda.optim import DropGradSGD
dist.init_process_group("gloo")
rank = dist.get_rank()
out = {}
for name, kw in json.loads(sys.argv[1]).items():
    torch.manual_seed(0)
    m = DDP(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)))
    torch.manual_seed(rank)  # per-rank data, as data loading seeds it
    opt = (torch.optim.SGD if kw.pop("sgd", False) else DropGradSGD)(m.parameters(), 0.1, **kw)
    for _ in range(4):
        x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    out[name] = [w.detach().flatten().tolist() for w in m.parameters()]
with open(os.path.join(os.environ["OUT"], f"rank{rank}.json"), "w") as fh:
    json.dump(out, fh)
dist.destroy_process_group()
# torch 2.14.1's DDP aborts in interpreter teardown in about 1 process of 6 ("terminate called
# without an active exception"; measured with torch.optim.SGD alone, this package not imported):
# the results are written, so leave without the teardown.
os._exit(0)
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_replicas_stay_identical(tmp_path):
    """Two processes (gloo on localhost), each seeding torch by its rank as data loading does:
    every configuration keeps the replicas bit-identical over 4 steps, and the noise is on (the
    result differs from plain SGD's). main: rank 0 and 1 differed by up to 0.094 after step 1."""
    import json
    configs = dict(none_seed=dict(p=0.2), int_seed=dict(p=0.2, seed=5), momentum=dict(p=0.2, momentum=0.9),
                   bernoulli_momentum=dict(p=0.2, mode="bernoulli", momentum=0.9), sgd=dict(sgd=True))
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-c", _DDP_WORKER, json.dumps(configs)],
                              env=dict(os.environ, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2",
                                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OUT=str(tmp_path),
                                       OMP_NUM_THREADS="1"), stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    for name in configs:
        assert r0[name] == r1[name], name
        if name != "sgd":
            assert r0[name] != r0["sgd"], name
