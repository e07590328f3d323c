"""Bad input gets a clear Python exception naming the argument, never a crash or garbage."""
import os

import pytest
import torch

import dropgrad_cuda as dg
from conftest import needs_emulator

W = torch.randn(4, 3)
G = torch.randn(4, 3)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: dg.drop_grad(G, 1.0), ValueError, "p must be in"),
    (lambda: dg.drop_grad(G, -0.1), ValueError, "p must be in"),
    (lambda: dg.drop_grad(G, float("nan")), ValueError, "p must be in"),
    (lambda: dg.drop_grad(G, "0.1"), TypeError, "p must be a real"),
    (lambda: dg.drop_grad(G, True), TypeError, "p must be a real"),
    (lambda: dg.drop_grad(G, 0.1, "uniform"), ValueError, "mode must be"),
    (lambda: dg.drop_grad(G, 0.1, backend="tpu"), ValueError, "backend must be one of"),
    (lambda: dg.drop_grad(G, 0.1, backend="cuda"), RuntimeError, "backend='cuda' needs CUDA tensors"),
    (lambda: dg.drop_grad(torch.empty(3, device="meta"), 0.1, backend="cuda-emulated"), RuntimeError,
     "backend='cuda-emulated' runs the CUDA kernels on CPU tensors"),
    (lambda: dg.drop_grad(torch.ones(3, dtype=torch.int32), 0.1), TypeError, "grad must be float16"),
    (lambda: dg.drop_grad(torch.ones(3, dtype=torch.bool), 0.1), TypeError, "grad must be float16"),
    (lambda: dg.drop_grad([1.0, 2.0], 0.1), TypeError, "grad must be a torch.Tensor"),
    (lambda: dg.drop_grad(G, 0.1, seed=-1), ValueError, "seed must be in"),
    (lambda: dg.drop_grad(G, 0.1, seed=2**64), ValueError, "seed must be in"),
    (lambda: dg.drop_grad(G, 0.1, seed=1.5), TypeError, "seed must be an int"),
    (lambda: dg.drop_grad(G, 0.1, offset=3), ValueError, "offset must be"),
    (lambda: dg.drop_grad(G, 0.1, offset=-4), ValueError, "offset must be"),
    (lambda: dg.dropgrad_update(W, torch.randn(3, 4), 0.1, 0.1), ValueError, "grad must have param's shape"),
    (lambda: dg.dropgrad_update(W, G.double(), 0.1, 0.1), TypeError, "grad must have param's dtype"),
    (lambda: dg.dropgrad_update(W, G, torch.ones(3), 0.1), ValueError, "lr must be 0-d or have param's shape"),
    (lambda: dg.dropgrad_update(W, G, torch.ones(4, 3, dtype=torch.float64), 0.1), TypeError, "full-shape lr"),
    (lambda: dg.dropgrad_update(W, G, torch.tensor(1), 0.1), TypeError, "lr must be a floating-point tensor"),
    (lambda: dg.dropgrad_update(W, G, "0.1", 0.1), TypeError, "lr must be a float or a tensor"),
    (lambda: dg.dropgrad_update(W, G, 0.1, 1.5), ValueError, "p must be in"),
    (lambda: dg.dropgrad_step([W, W], [G], 0.1, 0.1), ValueError, "same length"),
    (lambda: dg.dropgrad_step([W], [G], [0.1, 0.2], 0.1), ValueError, "one entry per param"),
    (lambda: dg.dropgrad_step([W], [G], [0.1], 0.1), TypeError, "a list lr must hold tensors"),
    (lambda: dg.dropgrad_step([W], [G], torch.ones(4, 3), 0.1), ValueError, "must be 0-d"),
    (lambda: dg.dropgrad_step([W], [G.half()], 0.1, 0.1), TypeError, r"grads\[0\] must have params\[0\]'s dtype"),
    # The C++ step kernel checks the pairs itself; the error still names the pair.
    (lambda: dg.dropgrad_step([W, W], [G, torch.randn(3, 4)], 0.1, 0.1), ValueError,
     r"grads\[1\] must have params\[1\]'s shape"),
    (lambda: dg.dropgrad_step([W], [torch.ones(4, 3, dtype=torch.int64)], 0.1, 0.1), TypeError, r"grads\[0\] must be"),
    (lambda: dg.dropgrad_step([W], [torch.empty(4, 3, device="meta")], 0.1, 0.1), ValueError,
     r"grads\[0\] is on meta but params\[0\] is on cpu"),
    (lambda: dg.dropgrad_step([W, "w"], [G, G], 0.1, 0.1), TypeError, r"params\[1\] must be a torch.Tensor"),
    (lambda: dg.dropgrad_step_([W.clone()], [G.half()], 0.1, 0.1), TypeError, r"grads\[0\] must have params\[0\]'s"),
    (lambda: dg.dropgrad_step_([W.clone()], [G], 0.1, 0.1, weight_decay="0.1"), TypeError, "weight_decay must be a real"),
    (lambda: dg.dropgrad_step_([W.clone()], [G], 0.1, 0.1, weight_decay=float("inf")), ValueError,
     "weight_decay must be finite"),
    (lambda: dg.dropgrad_step_([W.clone()], [G, G], 0.1, 0.1), ValueError, "same length"),
    (lambda: dg.meta_dropout(W, torch.randn(4)), ValueError, "a must have f's shape"),
    (lambda: dg.meta_dropout(W, G, deterministic=1), TypeError, "deterministic must be a bool"),
    (lambda: dg.logit_noise(W, torch.randn(4, 2)), ValueError, "s of shape"),
    (lambda: dg.logit_noise(W, torch.randn(4, 1).double()), TypeError, "s must have mu's dtype"),
    (lambda: dg.logit_noise(W, 1.0), TypeError, "s must be a torch.Tensor"),
    (lambda: dg.logit_noise(W, torch.randn(4, 1), deterministic=None), TypeError, "deterministic must be a bool"),
    (lambda: dg.philox4x32_10(torch.zeros(3, 4, dtype=torch.int64), torch.zeros(3, 3, dtype=torch.int64)),
     ValueError, r"key must have shape \(\.\.\., 2\)"),
    (lambda: dg.philox4x32_10(torch.zeros(3, 4, dtype=torch.int32), torch.zeros(3, 2, dtype=torch.int64)),
     TypeError, "counter must be an int64"),
    (lambda: dg.philox4x32_10(torch.full((1, 4), 2**32), torch.zeros(1, 2, dtype=torch.int64)),
     ValueError, "32-bit words"),
    (lambda: dg.philox4x32_10(torch.zeros(3, 4, dtype=torch.int64), torch.zeros(2, 2, dtype=torch.int64)),
     ValueError, "does not broadcast"),
])
def test_bad_input_raises_a_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_tensors_on_different_devices():
    with pytest.raises(ValueError, match="grad is on"):
        dg.dropgrad_update(W.cuda(), G, 0.1, 0.1)


def test_tensors_on_different_devices_without_a_gpu():
    meta = torch.empty(4, 3, device="meta")
    with pytest.raises(ValueError, match="grad is on meta but param is on cpu"):
        dg.dropgrad_update(W, meta, 0.1, 0.1)
    with pytest.raises(RuntimeError, match="no dropgrad_cuda backend runs on device meta"):
        dg.drop_grad(meta, 0.1)


def test_triton_on_cpu_without_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        dg.drop_grad(G, 0.1, backend="triton")


def test_cuda_backend_without_kernels_or_gpu():
    with pytest.raises(RuntimeError, match="backend='cuda'"):
        dg.dropgrad_update(W, G, 0.1, 0.1, backend="cuda")


def test_raw_op_rejects_mismatched_shapes_without_crashing():
    with pytest.raises(ValueError, match=r"grad must have param's shape \(4, 3\), got \(5,\)"):
        torch.ops.dropgrad.dropgrad_update(W, torch.randn(5), None, 0.1, 0.1, 2, 1, 0)


@pytest.mark.parametrize("ns", [pytest.param("dropgrad", id="cpu"),
                                pytest.param("dropgrad_emulated", id="cuda-emulated", marks=needs_emulator)])
@pytest.mark.parametrize("call,exc,match", [
    (lambda ns: ns.dropgrad_update(W, torch.randn(5), None, 0.1, 0.1, 2, 1, 0), ValueError, "grad must have param's shape"),
    (lambda ns: ns.drop_grad(torch.ones(3, dtype=torch.int32), 0.1, 2, 1, 0), TypeError, "grad must be float16"),
    (lambda ns: ns.dropgrad_step([W, W], [G], [], 0.1, 0.1, 2, 1, 0), ValueError, "same length"),
    (lambda ns: ns.dropgrad_step([W], [G.double()], [], 0.1, 0.1, 2, 1, 0), TypeError,
     r"grads\[0\] must have params\[0\]'s dtype"),
    (lambda ns: ns.dropgrad_step_([W.clone()], [G.double()], [], 0.1, 0.0, 0.1, 2, 1, 0), TypeError,
     r"grads\[0\] must have params\[0\]'s dtype"),
    (lambda ns: ns.dropgrad_step_([W.clone(), W.clone()], [G], [], 0.1, 0.0, 0.1, 2, 1, 0), ValueError, "length"),
    (lambda ns: ns.dropgrad_update(W, G, torch.ones(2, 2), 0.1, 0.1, 2, 1, 0), ValueError, "lr must be 0-d"),
    (lambda ns: ns.meta_dropout(W, torch.randn(4), False, 1, 0), ValueError, "a must have f's shape"),
    (lambda ns: ns.meta_dropout_backward(torch.randn(4), W, W, False, 1, 0), RuntimeError, "same shape"),
    (lambda ns: ns.meta_dropout_double_backward(W, W, torch.randn(4), W, W, False, 1, 0), RuntimeError, "same shape"),
    (lambda ns: ns.philox4x32_10(torch.zeros(3, 5, dtype=torch.int64), torch.zeros(3, 2, dtype=torch.int64)),
     RuntimeError, r"counter must have shape \(\.\.\., 4\)"),
    (lambda ns: ns.drop_grad(G, 0.1, 2, 1, 0, torch.tensor([1.0, 2.0])), RuntimeError, "rng_state must be"),
])
def test_raw_kernel_ops_refuse_bad_input(ns, call, exc, match):
    """The kernels' own host code (csrc/cpu; csrc/cuda/host_ops.h, run here by the emulator) checks
    what the Python layer does not reach."""
    with pytest.raises(exc, match=match):
        call(getattr(torch.ops, ns))


@pytest.mark.parametrize("ns", [pytest.param("dropgrad", id="cpu"),
                                pytest.param("dropgrad_emulated", id="cuda-emulated", marks=needs_emulator),
                                pytest.param("dropgrad_triton", id="triton-interpreter", marks=pytest.mark.skipif(
                                    os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1"))])
@pytest.mark.parametrize("call,match", [
    (lambda ns: ns.dropgrad_step([W], [G], [], 0.1, 0.1, 2, 1, 0, None, -1), "batch must be non-negative"),
    (lambda ns: ns.dropgrad_step([torch.randn(3, 2)], [torch.randn(3, 2)], [], 0.1, 0.1, 2, 1, 0, None, 2),
     r"params\[0\] must have the batch of 2 lists along dim 0"),
    (lambda ns: ns.dropgrad_step([torch.randn(2, 3)], [torch.randn(2, 3)], [torch.ones(3, 2)], 0.1, 0.1, 2, 1, 0, None, 2),
     r"lr\[0\] must be 0-d or have param's shape \(2, 3\)"),
])
def test_a_batch_of_lists_refuses_bad_input(ns, call, match):
    """dropgrad_step's batch argument (the vmap rule's): a negative batch, a tensor without the
    batch along dim 0, an lr of neither param's shape nor one list's; one check (dg::check_lists)
    for every namespace, so one exception type."""
    if ns == "dropgrad_triton":
        dg.ops._triton_ops()
    with pytest.raises(ValueError, match=match):
        call(getattr(torch.ops, ns))


@pytest.mark.parametrize("ns", [pytest.param("dropgrad", id="cpu"),
                                pytest.param("dropgrad_emulated", id="cuda-emulated", marks=needs_emulator),
                                pytest.param("dropgrad_triton", id="triton-interpreter", marks=pytest.mark.skipif(
                                    os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1"))])
def test_a_batch_of_lists_takes_a_one_element_lr_of_one_lists_shape(ns):
    """A one-list lr of one element (a Meta-SGD lr of a one-element bias, shared by the lists) is
    admitted by the check and read as that scalar."""
    if ns == "dropgrad_triton":
        dg.ops._triton_ops()
    op = getattr(torch.ops, ns).dropgrad_step
    w, g = torch.randn(2, 1), torch.randn(2, 1)
    got = op([w], [g], [torch.full((1,), 0.5)], 0.0, 0.1, 2, 1, 0, None, 2)
    assert torch.equal(got[0], op([w], [g], [], 0.5, 0.1, 2, 1, 0, None, 2)[0])


def test_in_place_step_under_a_transform_says_to_use_dropgrad_step():
    from torch.func import grad, vmap
    w = torch.randn(3, 4)
    with pytest.raises(RuntimeError, match="not supported under torch.func transforms: use dropgrad_step"):
        vmap(lambda w: dg.dropgrad_step_([w], [w], 0.1, 0.0))(w)
    with pytest.raises(RuntimeError, match="not supported under torch.func transforms"):
        grad(lambda w: (dg.dropgrad_step_([w.detach()], [w.detach()], 0.1, 0.0), w.sum())[1])(w)


def _namespaces():
    """Every namespace of raw ops: the CPU kernels', the emulated CUDA kernels', Triton's (under its
    interpreter) and the reference's."""
    from dropgrad_cuda import _reference_ops
    out = [torch.ops.dropgrad, _reference_ops]
    if dg.cuda_emulator_built():
        out.append(torch.ops.dropgrad_emulated)
    if os.environ.get("TRITON_INTERPRET") == "1":
        from dropgrad_cuda.triton_kernels import ops  # noqa: F401  registers the namespace
        out.append(torch.ops.dropgrad_triton)
    return out


def _outcome(call):
    try:
        call()
    except Exception as e:  # noqa: BLE001  the type and message are what is compared
        return type(e), str(e)
    return None


# (raw op call on a namespace, the public function's call with the same bad value or None)
_SCALAR_BAD = {
    "p above 1": (lambda k: k.drop_grad.default(G, 1.5, 2, 5, 0, None), lambda: dg.drop_grad(G, 1.5)),
    "p negative": (lambda k: k.dropgrad_update.default(W, G, None, 0.1, -0.2, 2, 5, 0, None),
                   lambda: dg.dropgrad_update(W, G, 0.1, -0.2)),
    "p nan": (lambda k: k.drop_grad.default(G, float("nan"), 1, 5, 0, None), lambda: dg.drop_grad(G, float("nan"))),
    "p in the in-place step": (lambda k: k.dropgrad_step_.default([W.clone()], [G], [], 0.1, 0.0, 1.5, 2, 5, 0, None),
                               lambda: dg.dropgrad_step_([W.clone()], [G], 0.1, 1.5)),
    "p in a list": (lambda k: k.dropgrad_step.default([W], [G], [], 0.1, 1.5, 2, 5, 0, None),
                    lambda: dg.dropgrad_step([W], [G], 0.1, 1.5)),
    "mode 7": (lambda k: k.drop_grad.default(G, 0.1, 7, 5, 0, None), None),
    "offset not a multiple of 4": (lambda k: k.drop_grad.default(G, 0.1, 2, 5, 3, None),
                                   lambda: dg.drop_grad(G, 0.1, offset=3)),
    "offset negative": (lambda k: k.meta_dropout.default(W, G, False, 5, -4, None),
                        lambda: dg.meta_dropout(W, G, offset=-4)),
    "offset past 2**63": (lambda k: k.noise.default(G, 0.0, 3, 5, 2**63 - 8, None), None),
    "offset in a backward": (lambda k: k.meta_dropout_backward.default(G, W, G, False, 5, 6, None), None),
}
_T64 = torch.ones(4, 3, dtype=torch.float64)
# The tensor mistakes the issue found answered three ways (or accepted by the reference).
_TENSOR_BAD = {
    "lr of the wrong shape": (lambda k: k.dropgrad_update.default(W, G, torch.ones(3), 0.0, 0.1, 2, 5, 0, None),
                              lambda: dg.dropgrad_update(W, G, torch.ones(3), 0.1)),
    "full-shape lr of another dtype": (lambda k: k.dropgrad_update.default(W, G, _T64, 0.0, 0.1, 2, 5, 0, None),
                                       lambda: dg.dropgrad_update(W, G, _T64, 0.1)),
    "integer lr": (lambda k: k.dropgrad_update.default(W, G, torch.tensor(1), 0.0, 0.1, 2, 5, 0, None),
                   lambda: dg.dropgrad_update(W, G, torch.tensor(1), 0.1)),
    "grad of another dtype": (lambda k: k.dropgrad_update.default(W, G.double(), None, 0.1, 0.1, 2, 5, 0, None),
                              lambda: dg.dropgrad_update(W, G.double(), 0.1, 0.1)),
    "grad of another shape": (lambda k: k.dropgrad_update.default(W, G.t(), None, 0.1, 0.1, 2, 5, 0, None),
                              lambda: dg.dropgrad_update(W, G.t(), 0.1, 0.1)),
    "integer grad": (lambda k: k.drop_grad.default(torch.ones(3, dtype=torch.int64), 0.1, 2, 5, 0, None),
                     lambda: dg.drop_grad(torch.ones(3, dtype=torch.int64), 0.1)),
    "lists of different lengths": (lambda k: k.dropgrad_step.default([W, W], [G], [], 0.1, 0.1, 2, 5, 0, None),
                                   lambda: dg.dropgrad_step([W, W], [G], 0.1, 0.1)),
    "an lr list of another length": (
        lambda k: k.dropgrad_step.default([W], [G], [torch.tensor(0.1)] * 2, 0.0, 0.1, 2, 5, 0, None),
        lambda: dg.dropgrad_step([W], [G], [torch.tensor(0.1)] * 2, 0.1)),
    "a list pair of another shape": (
        lambda k: k.dropgrad_step.default([W, W], [G, G.t()], [], 0.1, 0.1, 2, 5, 0, None),
        lambda: dg.dropgrad_step([W, W], [G, G.t()], 0.1, 0.1)),
    "in place, a pair of another dtype": (
        lambda k: k.dropgrad_step_.default([W.clone()], [G.half()], [], 0.1, 0.0, 0.1, 2, 5, 0, None),
        lambda: dg.dropgrad_step_([W.clone()], [G.half()], 0.1, 0.1)),
    "meta_dropout's a of another shape": (lambda k: k.meta_dropout.default(W, G.t(), False, 5, 0, None),
                                          lambda: dg.meta_dropout(W, G.t())),
}


@pytest.mark.parametrize("case", list(_SCALAR_BAD) + list(_TENSOR_BAD))
def test_raw_ops_of_every_namespace_and_the_public_function_say_the_same(case):
    """The op layer checks its arguments itself (main: the CPU and emulated kernels took p = 1.5,
    mode 7 and offset 3 silently and computed garbage; a wrong lr shape got three messages; the
    reference took a grad of another dtype and lists of different lengths), with one exception type
    and message on every namespace, and the public function raises that same one."""
    raw, public = {**_SCALAR_BAD, **_TENSOR_BAD}[case]
    outcomes = {k: _outcome(lambda: raw(k)) for k in _namespaces()}
    first = next(iter(outcomes.values()))
    assert first is not None and first[0] in (ValueError, TypeError), outcomes
    assert all(o == first for o in outcomes.values()), outcomes
    named = first[1].replace("a full-shape ", "").split(" ")[0].split("[")[0]
    assert named in ("p", "mode", "offset", "lr", "grad", "grads", "params", "a")  # names the argument, first
    if public is not None:
        assert _outcome(public) == first
