"""The CUDA kernels' own source run thread by thread on the CPU (backend="cuda-emulated", see
docs/gpu.md), aimed at what only the CUDA path has: the multi-tensor lists and their flushes,
the vector and unaligned paths, tails, grid-stride loops over a capped grid, 64-bit seeds and
offsets, and the stream read from rng_state in the kernel. The backend also runs every test
parametrized over backends (conftest.py); these add the cases those do not reach.

Exact: the emulator is built with -ffp-contract=off like the CPU kernels, so DropGrad ops equal
the reference bit for bit, and meta_dropout (whose softplus is the shared polynomial of
csrc/dropgrad_math.h, not PyTorch's) equals the CPU kernels bit for bit."""
import contextlib

import pytest
import torch

import dropgrad_cuda as dg
from conftest import needs_emulator
from dropgrad_cuda import reference as R

pytestmark = needs_emulator
E = torch.ops.dropgrad_emulated if dg.cuda_emulator_built() else None
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
CHUNK = 8192  # elements of a multi-tensor chunk (kChunk counters)


@pytest.fixture
def launches():
    """The grids launched since the fixture started, as a function."""
    E.launches()
    return lambda: list(E.launches())


@contextlib.contextmanager
def grid_limit(blocks):
    previous = E.grid_limit(blocks)
    try:
        yield
    finally:
        E.grid_limit(previous)


def randn(n, dtype=torch.float32, seed=0, storage_offset=0):
    """n elements; with a storage offset, a view that starts `storage_offset` elements into its buffer."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n + storage_offset, generator=g, dtype=torch.float64).to(dtype)
    return base[storage_offset:]


def step_and_reference(numels, dtypes, lr=0.05, p=0.2, mode="gaussian", seed=3, offset=0):
    ws = [randn(n, d, seed=2 * i) for i, (n, d) in enumerate(zip(numels, dtypes))]
    gs = [randn(n, d, seed=2 * i + 1) for i, (n, d) in enumerate(zip(numels, dtypes))]
    got = dg.dropgrad_step(ws, gs, lr, p, mode, seed=seed, offset=offset, backend="cuda-emulated")
    want = R.dropgrad_step(ws, gs, lr, p, mode, seed=seed, offset=offset)
    return got, want


def assert_all_equal(got, want):
    assert len(got) == len(want)
    for k, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == b.dtype and torch.equal(a, b), f"tensor {k}"


# ---------------------------------------------------------------- the multi-tensor list
def test_step_list_flushes_after_24_tensors(launches):
    numels = [CHUNK + 1 + k for k in range(30)]  # two chunks each, every numel % 4
    got, want = step_and_reference(numels, [torch.float32] * 30)
    assert launches() == [48, 12]  # 24 tensors of 2 chunks, then the other 6
    assert_all_equal(got, want)


def test_step_list_flushes_after_320_chunks_and_a_tensor_straddles_two_launches(launches):
    numels = [150 * CHUNK - 3] * 3  # 150 chunks each, the last one ragged; 450 chunks in all
    got, want = step_and_reference(numels, [torch.float32] * 3, mode="bernoulli", offset=2**33)
    assert launches() == [320, 130]  # the third tensor: 20 chunks in the first launch, 130 in the second
    assert_all_equal(got, want)


def test_step_groups_dtypes_into_their_own_launches(launches):
    dtypes = [torch.float32, torch.bfloat16, torch.float64, torch.float16] * 7  # 28 tensors, 7 per dtype
    numels = [5 + 3 * k for k in range(28)]
    got, want = step_and_reference(numels, dtypes, seed=2**63 + 11)
    assert launches() == [7, 7, 7, 7]  # one list per dtype, one one-chunk block per tensor
    assert_all_equal(got, want)


def test_step_with_full_shape_and_scalar_tensor_lrs(launches):
    ws = [randn(n, seed=n) for n in (3, CHUNK * 2 + 5, 17)]
    gs = [randn(n, seed=n + 1) for n in (3, CHUNK * 2 + 5, 17)]
    for lr in ([w.abs() for w in ws], [torch.tensor(0.3, dtype=torch.float64)] * 3):
        got = dg.dropgrad_step(ws, gs, lr, 0.1, "gaussian", seed=1, offset=4, backend="cuda-emulated")
        assert_all_equal(got, R.dropgrad_step(ws, gs, lr, 0.1, "gaussian", seed=1, offset=4))


# ---------------------------------------------------------------- vector, unaligned and tail paths
def elementwise(backend, dtype, n, storage_offset, seed=2**35 + 7, offset=12):
    """Every grid-stride op on views starting `storage_offset` elements into their buffers."""
    w, g, f, a, lr = (randn(n, dtype, seed=i, storage_offset=storage_offset) for i in range(5))
    lr = lr.abs()
    out = {
        "drop_grad": dg.drop_grad(g, 0.2, "bernoulli", seed=seed, offset=offset, backend=backend),
        "dropgrad_update": dg.dropgrad_update(w, g, 0.1, 0.2, "gaussian", seed=seed, offset=offset, backend=backend),
        "dropgrad_update_full_lr": dg.dropgrad_update(w, g, lr, 0.2, "gaussian", seed=seed, offset=offset,
                                                      backend=backend),
        "meta_dropout": dg.meta_dropout(f, a, seed=seed, offset=offset, backend=backend),
    }
    ns = dg.ops._kernels(backend, torch.device("cpu"))
    out["meta_dropout_backward"] = ns.meta_dropout_backward(g, f, a, False, seed, offset)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("storage_offset", [0, 1, 2, 3])
def test_views_at_every_alignment_and_tail(dtype, storage_offset):
    for n in (36, 37, 38, 39, 1):  # every numel % 4, and a lone element (the tail is the whole tensor)
        got = elementwise("cuda-emulated", dtype, n, storage_offset)
        cpu = elementwise("cpu", dtype, n, storage_offset)
        for name in got:
            assert_all_equal(torch.utils._pytree.tree_leaves(got[name]), torch.utils._pytree.tree_leaves(cpu[name]))
        w, g = randn(n, dtype, seed=0, storage_offset=storage_offset), randn(n, dtype, seed=1,
                                                                             storage_offset=storage_offset)
        assert torch.equal(got["drop_grad"], R.drop_grad(g, 0.2, "bernoulli", seed=2**35 + 7, offset=12))
        assert torch.equal(got["dropgrad_update"], R.dropgrad_update(w, g, 0.1, 0.2, "gaussian", seed=2**35 + 7,
                                                                     offset=12))


def test_noise_at_every_numel_mod_4():
    for n in (1, 2, 3, 4, 4097, 4098, 4099, 4100):
        for mode in ("gaussian", "bernoulli", "normal"):
            got = E.noise(torch.empty(n), 0.15, R.MODES[mode], 2**40 + 3, 8)
            assert torch.equal(got, R.noise(n, 0.15, mode, seed=2**40 + 3, offset=8)), (n, mode)


# ---------------------------------------------------------------- seeds, offsets and the grid
@pytest.mark.parametrize("seed,offset", [(2**32 + 5, 2**32 + 4), (2**64 - 1, 2**40 + 12), (7, 2**62)])
def test_seeds_and_offsets_beyond_32_bits(seed, offset):
    w, g = randn(1001, seed=1), randn(1001, seed=2)
    be = "cuda-emulated"
    assert torch.equal(dg.drop_grad(g, 0.2, seed=seed, offset=offset, backend=be),
                       R.drop_grad(g, 0.2, seed=seed, offset=offset))
    assert torch.equal(dg.dropgrad_update(w, g, 0.1, 0.2, "bernoulli", seed=seed, offset=offset, backend=be),
                       R.dropgrad_update(w, g, 0.1, 0.2, "bernoulli", seed=seed, offset=offset))
    assert_all_equal(dg.dropgrad_step([w, g], [g, w], 0.1, 0.2, seed=seed, offset=offset, backend=be),
                     R.dropgrad_step([w, g], [g, w], 0.1, 0.2, seed=seed, offset=offset))
    assert torch.equal(dg.meta_dropout(w, g, seed=seed, offset=offset, backend=be),
                       dg.meta_dropout(w, g, seed=seed, offset=offset, backend="cpu"))


def test_grid_stride_loops_over_a_capped_grid(launches):
    n = 100_003  # 25001 counters: 98 blocks of 256 threads uncapped
    w, g, f = randn(n, seed=1), randn(n, seed=2), randn(n, seed=3)
    ctr = torch.randint(0, 2**32, (3000, 4))
    key = torch.randint(0, 2**32, (3000, 2))
    calls = {
        "noise": lambda be: dg.ops._kernels(be, w.device).noise(w, 0.2, 2, 9, 4),
        "drop_grad": lambda be: dg.drop_grad(g, 0.2, seed=9, backend=be),
        "dropgrad_update": lambda be: dg.dropgrad_update(w, g, 0.1, 0.2, seed=9, backend=be),
        "meta_dropout": lambda be: dg.meta_dropout(f, g, seed=9, backend=be),
        "meta_dropout_backward": lambda be: dg.ops._kernels(be, w.device).meta_dropout_backward(g, f, w, False, 9, 4),
        "philox4x32_10": lambda be: dg.philox4x32_10(ctr, key, backend=be),
    }
    for name, call in calls.items():
        want = torch.utils._pytree.tree_leaves(call("cpu"))
        launches()
        assert_all_equal(torch.utils._pytree.tree_leaves(call("cuda-emulated")), want)
        assert launches() == ([12] if name == "philox4x32_10" else [98]), name
        with grid_limit(3):  # 33 trips of the grid-stride loop, the last one partial
            assert_all_equal(torch.utils._pytree.tree_leaves(call("cuda-emulated")), want)
        assert launches() == [3], name


# ---------------------------------------------------------------- the stream read in the kernel
def test_rng_state_offset_a_multiple_of_4_not_16():
    """rng_state [seed, 20] with offset argument 8: counters start at 7, an odd one."""
    state = torch.tensor([2**45 + 9, 20])
    w, g, f = randn(523, seed=1), randn(523, seed=2), randn(523, seed=3)
    lr = torch.tensor(0.25, dtype=torch.float64)
    s, o = 2**45 + 9, 28
    assert torch.equal(E.noise(w, 0.2, 2, 1, 8, state), R.noise(523, 0.2, "gaussian", seed=s, offset=o))
    assert torch.equal(E.drop_grad(g, 0.2, 1, 1, 8, state), R.drop_grad(g, 0.2, "bernoulli", seed=s, offset=o))
    assert torch.equal(E.dropgrad_update(w, g, lr, 0.0, 0.2, 2, 1, 8, state),
                       R.dropgrad_update(w, g, lr, 0.2, "gaussian", seed=s, offset=o))
    assert_all_equal(E.dropgrad_step([w, f, g], [g, w, f], [], 0.1, 0.2, 2, 1, 8, state),
                     R.dropgrad_step([w, f, g], [g, w, f], 0.1, 0.2, "gaussian", seed=s, offset=o))
    assert torch.equal(E.meta_dropout(f, g, False, 1, 8, state), dg.meta_dropout(f, g, seed=s, offset=o, backend="cpu"))
    assert_all_equal(E.meta_dropout_backward(w, f, g, False, 1, 8, state),
                     torch.ops.dropgrad.meta_dropout_backward(w, f, g, False, s, o))


def test_bad_rng_state_is_refused():
    with pytest.raises(RuntimeError, match="rng_state must be a contiguous int64 tensor"):
        E.drop_grad(randn(8), 0.2, 1, 1, 0, torch.tensor([1.0, 2.0]))
