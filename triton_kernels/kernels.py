"""The Triton kernels of the dropgrad ops. Each program covers ROWS Philox counters, i.e. a
(ROWS, 4) tile of 4*ROWS consecutive elements, so every Philox call serves four elements.

ROWS = 256 (1024 elements, 4 warps: 8 elements a thread): 1024-element tiles give 12-16 KiB in
flight per program. Predicted from the compiled SASS (docs/gpu.md, not measured), the updates are
memory-bound on A100 and H100 and drop_grad and meta_dropout's forward are bound by instruction
issue (80-190 instructions an element), so the tile size does not decide their speed.
Seed, counter base and the scalars are runtime arguments, never specialized on, so a new seed or
offset does not recompile. The element count `n` is specialized on as Triton does by default (a
multiple of 16 or not: at most two compiles a configuration): with `n` a multiple of 16 the mask
`idx < n` is uniform over each counter's four elements, so the accesses on aligned tensors are
16-byte vectors; with any `n` they are single elements, each with its own predicate (sm_90,
counted: 5-14 more instructions an element, drop_grad 82 against 75).
"""
import triton
import triton.language as tl

from ._math import cast_out, noise_tile, philox, softplus, softplus_grad, softplus_grad2

ROWS = 256
ROWS_C = tl.constexpr(ROWS)
# The step's programs cover twice as many: each first reads its tensor's row of the table (ten
# loads a thread, and the index arithmetic), which 16 elements a thread share better than 8
# (sm_90, counted: 60.1 -> 55.8 instructions an element).
STEP_ROWS = 512
STEP_ROWS_C = tl.constexpr(STEP_ROWS)
NUM_WARPS = 4
RUNTIME = ["seed", "q0", "p", "scale", "sigma"]

# What an elementwise kernel writes (its KIND): the noise itself, grad * n, or param - lr * (grad * n).
# The host passes the ints; a kernel compares with their constexpr twins, as ROWS_C (a jitted
# function reads only constexpr globals).
NOISE, DROP_GRAD, UPDATE = 0, 1, 2
NOISE_C, DROP_GRAD_C = tl.constexpr(NOISE), tl.constexpr(DROP_GRAD)


@triton.jit
def _tile(n):
    rows = tl.program_id(0).to(tl.int64) * ROWS_C + tl.arange(0, ROWS_C).to(tl.int64)
    idx = rows[:, None] * 4 + tl.arange(0, 4)[None, :].to(tl.int64)
    return rows, idx, idx < n



@triton.jit
def _stream(seed, q0, state_ptr, HAS_STATE: tl.constexpr):
    """The stream's key and first counter: the arguments, or rng_state's seed with its offset
    added (read when the kernel runs; see csrc/ops.cpp)."""
    if HAS_STATE:
        return tl.load(state_ptr), q0 + tl.load(state_ptr + 1) // 4
    else:
        return seed, q0


@triton.jit(do_not_specialize=RUNTIME)
def elementwise_kernel(out_ptr, grad_ptr, param_ptr, lr_ptr, state_ptr, n, seed, q0, p, scale, sigma,
                       KIND: tl.constexpr, MODE: tl.constexpr, LR_FULL: tl.constexpr, ACC: tl.constexpr,
                       HAS_STATE: tl.constexpr):
    rows, idx, mask = _tile(n)
    seed, q0 = _stream(seed, q0, state_ptr, HAS_STATE)
    if MODE == 0:
        nz = tl.full((ROWS_C, 4), 1.0, tl.float32)
    else:
        nz = noise_tile(seed, q0 + rows, p, scale, sigma, MODE)
    if KIND == NOISE_C:
        tl.store(out_ptr + idx, nz, mask=mask)
    else:
        g = tl.load(grad_ptr + idx, mask=mask).to(ACC)
        if MODE != 0:
            g = g * nz.to(ACC)
        if KIND == DROP_GRAD_C:
            tl.store(out_ptr + idx, cast_out(g, out_ptr.dtype.element_ty), mask=mask)
        else:
            if LR_FULL:
                lr = tl.load(lr_ptr + idx, mask=mask).to(ACC)
            else:
                lr = tl.load(lr_ptr).to(ACC)
            w = tl.load(param_ptr + idx, mask=mask).to(ACC)
            tl.store(out_ptr + idx, cast_out(w - lr * g, out_ptr.dtype.element_ty), mask=mask)


# One row of the step kernel's table per tensor: pointers as int64 and the tensor's layout.
# aligned: all of the row's pointers (param, grad, out, and a full lr) are 16-byte aligned.
TABLE_COLUMNS = ("param", "grad", "out", "lr", "numel", "q0", "first_block", "lr_is_full", "aligned")
PARAM, GRAD, OUT, LR, NUMEL, Q0, FIRST_BLOCK, LR_IS_FULL, ALIGNED, TABLE_COLS = (tl.constexpr(i) for i in range(10))


@triton.jit
def _row_ptr(row, col, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    """Column `col` of a table row as a pointer; ALIGNED tells the compiler it is 16-byte aligned
    (the launcher's specialization does that for pointer arguments, not for pointers read from memory)."""
    ptr = tl.load(row + col).to(tl.pointer_type(DTYPE))
    if ALIGNED:
        ptr = tl.multiple_of(ptr, 16)
    return ptr


@triton.jit
def _step_tile(row, idx, n, nz, wd_ptr, MODE: tl.constexpr, DTYPE: tl.constexpr, ACC: tl.constexpr,
               HAS_WD: tl.constexpr, WHOLE: tl.constexpr):
    """One tile of step_kernel. WHOLE: the tile is in range and the row aligned, so every access is
    an unmasked 16-byte vector; otherwise each element is masked."""
    mask = idx < n
    if WHOLE:
        w = tl.load(_row_ptr(row, PARAM, DTYPE, True) + idx).to(ACC)
        g = tl.load(_row_ptr(row, GRAD, DTYPE, True) + idx).to(ACC)
    else:
        w = tl.load(_row_ptr(row, PARAM, DTYPE, False) + idx, mask=mask).to(ACC)
        g = tl.load(_row_ptr(row, GRAD, DTYPE, False) + idx, mask=mask).to(ACC)
    if HAS_WD:
        g = g + tl.load(wd_ptr) * w
    if MODE != 0:
        g = g * nz.to(ACC)
    full = tl.load(row + LR_IS_FULL) != 0
    # A full-shape lr has the param's dtype; a scalar one was converted to the compute dtype.
    if WHOLE:
        if full:
            step = tl.load(_row_ptr(row, LR, DTYPE, True) + idx).to(ACC) * g
        else:
            step = tl.load(_row_ptr(row, LR, ACC, False)) * g
    else:
        lr_ptr = tl.load(row + LR)
        # The scalar flag broadcast to a block compare first: Triton 3.9's interpreter types a block
        # mask & a scalar bool as int64 and refuses it as a mask.
        lr_one = tl.load(lr_ptr.to(tl.pointer_type(ACC)), mask=~full, other=0.0)
        lr_mask = mask & ((idx * 0 + full.to(tl.int64)) != 0)
        if DTYPE == ACC:  # the scalar lr as the masked-off lanes' value: one tile, no select (a float64 spill otherwise)
            lr = tl.load(lr_ptr.to(tl.pointer_type(DTYPE)) + idx, mask=lr_mask, other=lr_one)
        else:  # a float32 scalar lr must not round through the half type
            lr = tl.where(full, tl.load(lr_ptr.to(tl.pointer_type(DTYPE)) + idx, mask=lr_mask).to(ACC), lr_one)
        step = lr * g
    if WHOLE:
        tl.store(_row_ptr(row, OUT, DTYPE, True) + idx, cast_out(w - step, DTYPE))
    else:
        tl.store(_row_ptr(row, OUT, DTYPE, False) + idx, cast_out(w - step, DTYPE), mask=mask)


@triton.jit(do_not_specialize=["seed", "p", "scale", "sigma"])
def step_kernel(table_ptr, block_tensor_ptr, state_ptr, wd_ptr, seed, p, scale, sigma, MODE: tl.constexpr,
                DTYPE: tl.constexpr, ACC: tl.constexpr, HAS_STATE: tl.constexpr, HAS_WD: tl.constexpr):
    """dropgrad_update over a list of tensors of one dtype in one launch, in the way of apex's
    multi_tensor_apply: block_tensor[i] names the tensor (table row) program i works on. The
    in-place step (out = param) adds weight_decay * param to the gradient first (HAS_WD; wd_ptr a
    0-d tensor of the compute dtype, so float64 steps get the exact double)."""
    pid = tl.program_id(0).to(tl.int64)
    row = table_ptr + tl.load(block_tensor_ptr + pid).to(tl.int64) * TABLE_COLS
    n = tl.load(row + NUMEL)
    local = pid - tl.load(row + FIRST_BLOCK)
    rows = local * STEP_ROWS_C + tl.arange(0, STEP_ROWS_C).to(tl.int64)
    idx = rows[:, None] * 4 + tl.arange(0, 4)[None, :].to(tl.int64)
    # The noise first, before any tile is loaded, and kept in float32 until used: fewer live
    # registers (no spills on sm_90 in float64).
    nz = 1.0
    if MODE != 0:
        seed, q0 = _stream(seed, tl.load(row + Q0), state_ptr, HAS_STATE)
        nz = noise_tile(seed, q0 + rows, p, scale, sigma, MODE)
    # A row's tiles are whole but its last; the tensors of a list are whole, aligned tensors but for
    # odd views and batches of odd sizes.
    if ((local + 1) * (STEP_ROWS_C * 4) <= n) & (tl.load(row + ALIGNED) != 0):
        _step_tile(row, idx, n, nz, wd_ptr, MODE, DTYPE, ACC, HAS_WD, True)
    else:
        _step_tile(row, idx, n, nz, wd_ptr, MODE, DTYPE, ACC, HAS_WD, False)


@triton.jit
def _meta_dropout_z(a_ptr, idx, mask, rows, seed, q0, state_ptr, NOISY: tl.constexpr, HAS_STATE: tl.constexpr,
                    ACC: tl.constexpr):
    """a + eps, with eps regenerated from the stream (forward and backward alike; never saved)."""
    z = tl.load(a_ptr + idx, mask=mask).to(ACC)
    if NOISY:
        seed, q0 = _stream(seed, q0, state_ptr, HAS_STATE)
        z = z + noise_tile(seed, q0 + rows, 0.0, 1.0, 0.0, 3).to(ACC)
    return z


@triton.jit(do_not_specialize=["seed", "q0"])
def meta_dropout_kernel(out_ptr, f_ptr, a_ptr, state_ptr, n, seed, q0, NOISY: tl.constexpr, ACC: tl.constexpr,
                        HAS_STATE: tl.constexpr):
    rows, idx, mask = _tile(n)
    z = _meta_dropout_z(a_ptr, idx, mask, rows, seed, q0, state_ptr, NOISY, HAS_STATE, ACC)
    f = tl.load(f_ptr + idx, mask=mask).to(ACC)
    tl.store(out_ptr + idx, cast_out(f * softplus(z), out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["seed", "q0"])
def meta_dropout_backward_kernel(gf_ptr, ga_ptr, gout_ptr, f_ptr, a_ptr, state_ptr, n, seed, q0, NOISY: tl.constexpr,
                                 ACC: tl.constexpr, HAS_STATE: tl.constexpr):
    rows, idx, mask = _tile(n)
    z = _meta_dropout_z(a_ptr, idx, mask, rows, seed, q0, state_ptr, NOISY, HAS_STATE, ACC)
    g = tl.load(gout_ptr + idx, mask=mask).to(ACC)
    f = tl.load(f_ptr + idx, mask=mask).to(ACC)
    tl.store(gf_ptr + idx, cast_out(g * softplus(z), gf_ptr.dtype.element_ty), mask=mask)
    tl.store(ga_ptr + idx, cast_out((g * f) * softplus_grad(z), ga_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["seed", "q0"])
def meta_dropout_double_backward_kernel(dgo_ptr, df_ptr, da_ptr, ggf_ptr, gga_ptr, gout_ptr, f_ptr, a_ptr, state_ptr, n,
                                        seed, q0, NOISY: tl.constexpr, ACC: tl.constexpr, HAS_STATE: tl.constexpr):
    """csrc/dropgrad_math.h:meta_dropout_double_backward, in its operation order."""
    rows, idx, mask = _tile(n)
    z = _meta_dropout_z(a_ptr, idx, mask, rows, seed, q0, state_ptr, NOISY, HAS_STATE, ACC)
    ggf = tl.load(ggf_ptr + idx, mask=mask).to(ACC)
    gga = tl.load(gga_ptr + idx, mask=mask).to(ACC)
    g = tl.load(gout_ptr + idx, mask=mask).to(ACC)
    f = tl.load(f_ptr + idx, mask=mask).to(ACC)
    s = softplus_grad(z)
    dt = dgo_ptr.dtype.element_ty
    tl.store(dgo_ptr + idx, cast_out(ggf * softplus(z) + (gga * f) * s, dt), mask=mask)
    tl.store(df_ptr + idx, cast_out((gga * g) * s, dt), mask=mask)
    tl.store(da_ptr + idx, cast_out((ggf * g) * s + ((gga * g) * f) * softplus_grad2(z), dt), mask=mask)


@triton.jit(do_not_specialize=["n"])
def philox_kernel(out_ptr, counter_ptr, key_ptr, n, BLOCK: tl.constexpr):
    """The raw generator on (n, 4) counters and (n, 2) keys of 32-bit words held in int64."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    m = i < n
    c0 = tl.load(counter_ptr + i * 4, mask=m).to(tl.uint32)
    c1 = tl.load(counter_ptr + i * 4 + 1, mask=m).to(tl.uint32)
    c2 = tl.load(counter_ptr + i * 4 + 2, mask=m).to(tl.uint32)
    c3 = tl.load(counter_ptr + i * 4 + 3, mask=m).to(tl.uint32)
    k0 = tl.load(key_ptr + i * 2, mask=m).to(tl.uint32)
    k1 = tl.load(key_ptr + i * 2 + 1, mask=m).to(tl.uint32)
    r0, r1, r2, r3 = philox(c0, c1, c2, c3, k0, k1)
    tl.store(out_ptr + i * 4, r0.to(tl.int64), mask=m)
    tl.store(out_ptr + i * 4 + 1, r1.to(tl.int64), mask=m)
    tl.store(out_ptr + i * 4 + 2, r2.to(tl.int64), mask=m)
    tl.store(out_ptr + i * 4 + 3, r3.to(tl.int64), mask=m)
