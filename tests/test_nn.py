"""The modules: MetaDropout and LogitNoise compute the fused ops on their generators' outputs,
switch to deterministic on query passes, keep their generators out of the inner loop; the CML
co-learner joins the outer loss only and drops for inference."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import dropgrad_cuda as dg
from dropgrad_cuda import nn as dnn
from dropgrad_cuda.integrations import func

# the modules' layers and generators: ATen's convolutions and matrix products
pytestmark = pytest.mark.numerics


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.md = dnn.MetaDropout(nn.Conv2d(2, 4, 3, padding=1))
        self.head = nn.Linear(4 * 6 * 6, 3)
        self.noise = dnn.LogitNoise(4 * 6 * 6)

    def features(self, x):
        return F.relu(self.md(x))

    def forward(self, x):
        h = self.features(x).flatten(1)
        return self.noise(h, self.head(h))


def test_meta_dropout_block_is_the_op_on_the_generator_output():
    torch.manual_seed(0)
    m, x = Block(), torch.randn(5, 2, 6, 6)
    f, a = m.md.layer(x), m.md.generator(x)
    assert torch.equal(m.md(x, seed=3), dg.meta_dropout(f, a, seed=3))
    assert m.md.generator.net.weight.shape == m.md.layer.weight.shape
    assert not torch.equal(m.md.generator.net.weight, m.md.layer.weight)  # its own initialization
    with dnn.query_pass(m):
        torch.testing.assert_close(m.md(x), f * F.softplus(a), rtol=4 * 2**-23, atol=4 * 2**-23)  # ulps, as test_ops
        h = m.features(x).flatten(1)
        assert torch.equal(m(x), m.head(h))  # logits = mu on query passes
    assert not m.md.deterministic and not m.noise.deterministic  # restored


def test_logit_noise_module_is_the_op_with_one_scale_per_example():
    torch.manual_seed(0)
    m, h = dnn.LogitNoise(8), torch.randn(6, 8)
    mu = torch.randn(6, 5)
    s = m.generator(h)
    assert s.shape == (6, 1)
    assert torch.equal(m(h, mu, seed=4), dg.logit_noise(mu, s, seed=4))


def test_inner_parameters_leave_out_the_generators_and_the_co_learner():
    torch.manual_seed(0)
    m = Block()
    dnn.attach_co_learner(m, (4, 6, 6), 3)
    names = list(dnn.inner_parameters(m))
    assert names == ["md.layer.weight", "md.layer.bias", "head.weight", "head.bias"]
    assert any("generator" in n for n, _ in m.named_parameters()) and any("co_learner" in n for n in m.state_dict())
    co = dnn.drop_co_learner(m)
    assert isinstance(co, dnn.CoLearner) and not any("co_learner" in n for n in m.state_dict())


def test_mc_loss_averages_fresh_samples_with_the_published_defaults():
    calls = []

    def loss():
        calls.append(1)
        return torch.tensor(float(len(calls)))

    assert dnn.mc_loss(loss, training=True).item() == 1.0 and len(calls) == 1
    calls.clear()
    assert dnn.mc_loss(loss, training=False).item() == pytest.approx(15.5) and len(calls) == 30
    calls.clear()
    assert dnn.mc_loss(loss, training=True, samples=4).item() == pytest.approx(2.5)
    with pytest.raises(ValueError, match="samples must be a positive int"):
        dnn.mc_loss(loss, training=True, samples=0)


def test_co_learner_heads():
    assert dnn.CoLearner((4, 6, 6), 3)(torch.randn(2, 4, 6, 6)).shape == (2, 3)
    assert dnn.CoLearner((10,), 1)(torch.randn(2, 10)).shape == (2, 1)
    with pytest.raises(ValueError, match="feature_shape"):
        dnn.CoLearner((3, 4), 2)


def test_meta_dropout_and_cml_second_order_meta_gradients():
    """Second-order MAML over a model with a MetaDropout block, logit noise and a co-learner:
    theta adapts, phi and the co-learner receive outer gradients only, and the co-learner's loss
    reaches the shared extractor through the adapted parameters."""
    torch.manual_seed(0)
    m = Block().double()
    co = dnn.attach_co_learner(m, (4, 6, 6), 3).double()
    g = torch.Generator().manual_seed(1)
    xs, xq = torch.randn(6, 2, 6, 6, generator=g, dtype=torch.float64), torch.randn(6, 2, 6, 6, generator=g,
                                                                                      dtype=torch.float64)
    ys, yq = torch.randint(0, 3, (6,), generator=g), torch.randint(0, 3, (6,), generator=g)

    def outer(lam):
        torch.manual_seed(2)
        fast = dnn.inner_parameters(m)
        for _ in range(2):
            loss = dnn.mc_loss(lambda: F.cross_entropy(functional_call(m, fast, (xs,)), ys), training=True, samples=2)
            fast = func.inner_step(fast, func.grads_of(loss, fast), 0.1, 0.1)
        with dnn.query_pass(m):
            q = F.cross_entropy(functional_call(m, fast, (xq,)), yq)
            co_feats = functional_call(m.md, {k[3:]: v for k, v in fast.items() if k.startswith("md.")}, (xq,))
        total = q + co.lam * lam * F.cross_entropy(co(F.relu(co_feats)), yq)
        return dict(zip((n for n, _ in m.named_parameters()),
                        torch.autograd.grad(total, list(m.parameters()), allow_unused=True)))

    with_co, without = outer(1.0), outer(0.0)
    assert with_co["md.generator.net.weight"] is not None and with_co["md.generator.net.weight"].abs().sum() > 0
    assert with_co["noise.generator.net.weight"].abs().sum() > 0  # phi of the logit noise: outer only
    assert with_co["co_learner.net.0.weight"].abs().sum() > 0 and not without["co_learner.net.0.weight"].any()
    assert not torch.allclose(with_co["md.layer.weight"], without["md.layer.weight"])


@pytest.mark.parametrize("make", [
    lambda: nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 5)),
    lambda: nn.Sequential(nn.Linear(8, 5), nn.ReLU()),  # shapes that would fit the co-learner's head
], ids=["sequential", "sequential-fitting"])
def test_co_learner_leaves_a_container_forward_alone(make):
    torch.manual_seed(0)
    m, x = make(), torch.randn(3, 8)
    want, n = m(x), len(m)
    co = dnn.attach_co_learner(m, (5,), 5)
    assert torch.equal(m(x), want) and len(m) == n and all(not isinstance(t, dnn.CoLearner) for t in m)
    assert {id(p) for p in co.parameters()} <= {id(p) for p in m.parameters()}  # the outer optimizer sees it
    assert any(k.startswith("co_learner.") for k in m.state_dict())
    assert dnn.drop_co_learner(m) is co and type(m) is nn.Sequential and torch.equal(m(x), want)


def test_a_model_with_a_co_learner_saves_copies_and_pickles():
    """Checkpointing the whole model during CML meta-training (main: PicklingError, the hiding
    class made at run time has no importable name)."""
    import io
    import pickle
    torch.manual_seed(0)
    m, x = nn.Sequential(nn.Linear(4, 5), nn.ReLU()), torch.randn(3, 4)
    dnn.attach_co_learner(m, (5,), 2)
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    for other in (torch.load(buf, weights_only=False), copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert type(other) is type(m) and len(other) == 2 and torch.equal(other(x), m(x))
        assert other.co_learner is not m.co_learner and isinstance(other.co_learner, dnn.CoLearner)
        assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), m.state_dict().values()))
        dnn.drop_co_learner(other)
        assert type(other) is nn.Sequential and not hasattr(other, "co_learner")


def test_co_learner_leaves_module_lists_and_dicts_alone():
    lst, dct = nn.ModuleList([nn.Linear(2, 2)]), nn.ModuleDict({"a": nn.Linear(2, 2)})
    for c in (lst, dct):
        dnn.attach_co_learner(c, (2,), 2)
    assert len(lst) == 1 and list(lst) == [lst[0]] and len(dct) == 1 and list(dct) == ["a"]
    lst.append(nn.Linear(2, 2))
    assert len(lst) == 2 and isinstance(lst[1], nn.Linear)


def test_co_learner_on_small_feature_maps():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # main warned of a zero-element tensor here
        co = dnn.CoLearner((8, 1, 1), 5)  # Conv-4 on 28x28 Omniglot
    loss = co.loss(torch.randn(4, 8, 1, 1), torch.arange(4), F.cross_entropy)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in co.parameters())
    with pytest.raises(ValueError, match="feature_shape"):
        dnn.CoLearner((8, 0, 3), 5)


def test_eval_mode_is_deterministic_like_the_query_pass():
    torch.manual_seed(0)
    m, x = Block(), torch.randn(5, 2, 6, 6)
    with dnn.query_pass(m):
        want = m(x)
    m.eval()
    assert torch.equal(m(x), want) and torch.equal(m(x), m(x))
    m.train()
    assert not torch.equal(m(x), want)


@pytest.mark.parametrize("wrap", [nn.utils.parametrizations.weight_norm, nn.utils.parametrizations.spectral_norm,
                                  nn.utils.spectral_norm], ids=["weight_norm", "spectral_norm", "spectral_norm-hook"])
def test_meta_dropout_generator_is_initialized_afresh_under_weight_and_spectral_norm(wrap):
    torch.manual_seed(0)
    layer = wrap(nn.Linear(6, 6))
    md = dnn.MetaDropout(layer)
    gen = md.generator.net
    mine = {n: p for n, p in layer.named_parameters() if "bias" not in n}
    theirs = {n: p for n, p in gen.named_parameters() if "bias" not in n}
    assert mine.keys() == theirs.keys() and all(not torch.equal(mine[n], theirs[n]) for n in mine)
    assert not torch.equal(gen.weight, layer.weight) and layer.weight.shape == gen.weight.shape  # both still work
    assert md(torch.randn(3, 6)).shape == (3, 6)


def test_meta_dropout_refuses_the_deprecated_weight_norm_hook_clearly():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        layer = nn.utils.weight_norm(nn.Linear(3, 3))
    with pytest.raises(TypeError, match="parametrizations.weight_norm"):
        dnn.MetaDropout(layer)
