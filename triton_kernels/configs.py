"""The one table of the Triton backend's kernel specializations: every configuration the host code
(ops.py) launches, with its compile signature. The ahead-of-time compile (aot.py), the SASS tables
(dropgrad_cuda/sass.py) and the launches themselves all read it: ops.py refuses to launch a
configuration that is not in it, so the suite (which runs every launch under the interpreter)
fails when a launch and the table drift apart.
"""
import itertools

import triton.language as tl

from . import kernels as K

DTYPES = {"fp32": tl.float32, "fp64": tl.float64, "fp16": tl.float16, "bf16": tl.bfloat16}


def _acc(d):
    return tl.float64 if d == "fp64" else tl.float32


# The op each KIND of the elementwise kernel computes.
_ELEMENTWISE_OPS = {K.NOISE: "noise", K.DROP_GRAD: "drop_grad", K.UPDATE: "dropgrad_update"}


def configurations():
    """(name, kernel, signature, constexprs): every specialization the host code launches, named
    op[dtype,constexprs...] (dropgrad_step's also serve dropgrad_step_)."""
    runtime = {"seed": "i64", "p": "fp32", "scale": "fp32", "sigma": "fp32"}
    for d, kind, mode, lr_full, state in itertools.product(DTYPES, (K.NOISE, K.DROP_GRAD, K.UPDATE), (0, 1, 2, 3),
                                                           (False, True), (False, True)):
        launched = {K.NOISE: d == "fp32" and not lr_full and mode != 0,  # the noise op writes float32
                    K.DROP_GRAD: not lr_full,  # mode 3: logit_noise's backward
                    K.UPDATE: mode != 3 or not lr_full}[kind]  # mode 3: logit_noise, a scalar lr of -1
        if not launched or (state and mode == 0):  # no noise, no stream
            continue
        sig = {"out_ptr": f"*{d}", "grad_ptr": f"*{d}", "param_ptr": f"*{d}", "lr_ptr": f"*{d if lr_full else _acc(d).name}",
               "state_ptr": "*i64", "n": "i64", "q0": "i64", **runtime, "KIND": "constexpr", "MODE": "constexpr",
               "LR_FULL": "constexpr", "ACC": "constexpr", "HAS_STATE": "constexpr"}
        yield (f"{_ELEMENTWISE_OPS[kind]}[{d},mode={mode},lr_full={lr_full},state={state}]", K.elementwise_kernel, sig,
               {"KIND": kind, "MODE": mode, "LR_FULL": lr_full, "ACC": _acc(d), "HAS_STATE": state})
    for d, mode, state, wd in itertools.product(DTYPES, (0, 1, 2, 3), (False, True), (False, True)):
        if (state and mode == 0) or (mode == 3 and wd):  # mode 3: logit_noise under vmap, never in place
            continue
        sig = {"table_ptr": "*i64", "block_tensor_ptr": "*i32", "state_ptr": "*i64", "wd_ptr": f"*{_acc(d).name}" if wd else "*i64", **runtime,
               "MODE": "constexpr", "DTYPE": "constexpr", "ACC": "constexpr", "HAS_STATE": "constexpr",
               "HAS_WD": "constexpr"}
        yield (f"dropgrad_step[{d},mode={mode},state={state},wd={wd}]", K.step_kernel, sig,
               {"MODE": mode, "DTYPE": DTYPES[d], "ACC": _acc(d), "HAS_STATE": state, "HAS_WD": wd})
    for d, noisy, state in itertools.product(DTYPES, (False, True), (False, True)):
        if state and not noisy:
            continue
        base = {"state_ptr": "*i64", "n": "i64", "seed": "i64", "q0": "i64", "NOISY": "constexpr", "ACC": "constexpr",
                "HAS_STATE": "constexpr"}
        meta = {"NOISY": noisy, "ACC": _acc(d), "HAS_STATE": state}
        yield (f"meta_dropout[{d},noisy={noisy},state={state}]", K.meta_dropout_kernel,
               {"out_ptr": f"*{d}", "f_ptr": f"*{d}", "a_ptr": f"*{d}", **base}, meta)
        yield (f"meta_dropout_backward[{d},noisy={noisy},state={state}]", K.meta_dropout_backward_kernel,
               {"gf_ptr": f"*{d}", "ga_ptr": f"*{d}", "gout_ptr": f"*{d}", "f_ptr": f"*{d}", "a_ptr": f"*{d}", **base}, meta)
        yield (f"meta_dropout_double_backward[{d},noisy={noisy},state={state}]", K.meta_dropout_double_backward_kernel,
               {**{f"{k}_ptr": f"*{d}" for k in ("dgo", "df", "da", "ggf", "gga", "gout", "f", "a")}, **base}, meta)
    yield ("philox4x32_10", K.philox_kernel, {"out_ptr": "*i64", "counter_ptr": "*i64", "key_ptr": "*i64", "n": "i64",
                                              "BLOCK": "constexpr"}, {"BLOCK": 1024})


def predicted():
    """{op: configuration name}: the launch each fused op's GPU predictions (dropgrad_cuda/sass.py)
    are made for: float32, Gaussian noise (meta-dropout's ops: their normal noise), a scalar lr, no
    weight decay, the host's stream."""
    typical = {"MODE": 2, "NOISY": True, "LR_FULL": False, "HAS_STATE": False, "HAS_WD": False}
    out = {}
    for name, _, _, constexprs in configurations():
        if "[fp32," in name and all(constexprs.get(k, v) == v for k, v in typical.items()):
            out.setdefault(name.split("[")[0], name)
    return out


def key(kernel, constexprs):
    """A launch's identity in the table: the kernel and its constexpr values."""
    return kernel, tuple(sorted((k, str(v)) for k, v in constexprs.items()))


LAUNCHABLE = frozenset(key(fn, constexprs) for _, fn, _, constexprs in configurations())
