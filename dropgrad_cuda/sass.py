"""What a GPU will do with the built kernels, read from their SASS (no GPU needed): instructions
per element by class, and the predicted bound of each fused float32 op on A100, H100 and H200.

The method (docs/gpu.md, "Compute bound from the SASS"):
- SASS from `cuobjdump -sass` of the built library (CUDA kernels) and of the cubins that Triton's
  ahead-of-time compile produces (triton_kernels/aot.py) for the float32 noisy configurations.
- The steady state of a CUDA kernel is its grid-stride loop (the backward branch whose body
  stores to global memory); one iteration handles one Philox counter, four elements. A kernel
  has such loops for aligned pointers and for others, one of each per noise mode; the aligned one
  with the noisy mode's arithmetic is counted (the loop whose path moves its bytes in the fewest
  global loads and stores and, among those, has the most arithmetic). A Triton
  program has no loop: its path from entry to exit handles ROWS * 4 / (32 * NUM_WARPS) elements
  a thread (STEP_ROWS for the step's kernel).
- Within that body, branches are uniform choices (noise mode, weight decay, the lr form);
  the path counted is the one with the fewest global loads and stores and, among those, the most
  arithmetic: 16-byte vector accesses with the noisy mode's arithmetic (and the optional weight
  decay), the steady state of a large aligned tensor. Inner backward branches and called slow paths (CALL) count once. The
  elements a path handles are its stored bytes over the kernel's outputs and element size.
- Time per element per SM is the largest of: all instructions over the issue rate (4 schedulers,
  128 thread-instructions a clock), each pipe's instructions over its rate. Elements per second:
  SMs x clock / that. Memory time per element: the bytes the op must move (dropgrad_cuda._table
  ELEMENTS_MOVED x 4 bytes) over HBM bandwidth. The larger is the bound; the share of the memory
  roofline is memory time / the larger.
"""
import os
import re
import subprocess
import tempfile
from collections import Counter

from ._table import ELEMENTS_MOVED, SCHEMAS
from .cuda_build import _short, cuobjdump

CLASSES = ("int multiply", "fp32", "fp64", "special function", "conversion", "other int/logic", "memory", "control")
_CLASS_OF = {**{op: "int multiply" for op in ("IMAD", "IMUL")},
             **{op: "fp32" for op in ("FADD", "FMUL", "FFMA")},
             **{op: "fp64" for op in ("DADD", "DMUL", "DFMA")},
             "MUFU": "special function",
             **{op: "conversion" for op in ("F2F", "F2I", "I2F", "FRND", "F2FP", "I2FP", "F2IP")},
             **{op: "memory" for op in ("LDG", "STG", "LD", "ST", "LDS", "STS", "LDL", "STL", "LDC", "ATOM", "RED")},
             **{op: "control" for op in ("BRA", "EXIT", "CALL", "RET", "BSSY", "BSYNC", "BAR", "NOP", "WARPSYNC",
                                         "YIELD", "BREAK", "BMOV", "BPT")}}
ARITHMETIC = ("int multiply", "fp32", "fp64", "special function", "conversion")

# The GPUs predicted for, with the sources of their figures. Rates: results per clock per SM, the
# CUDA C++ Programming Guide's throughput table (compute capability 8.0 and 9.0): FP32 add/mul/fma
# 64 and 128, FP64 32 and 64, 32-bit integer multiply-add 64, special functions (MUFU) 16,
# conversions 16, other 32-bit integer and logic 64; loads/stores 32 (the LD/ST units of the
# whitepapers). Integer multiply-adds share the FMA pipe with FP32 (the "fmaheavy" pipe, half of
# sm_90's FP32 rate). SMs, boost clock and HBM bandwidth: NVIDIA's A100 (SXM4 80GB), H100
# (SXM5 80GB) and H200 (SXM 141GB: the H100's SMs and clock, HBM3e) datasheets. The H200 is the GPU
# this project can be lent (scripts/gpu_check.sh measures what these predict).
GPUS = {
    "A100": dict(arch="sm_80", sms=108, ghz=1.41, hbm_gbs=2039,
                 rates={"fp32": 64, "fp64": 32, "int multiply": 64, "special function": 16, "conversion": 16,
                        "other int/logic": 64, "memory": 32}),
    "H100": dict(arch="sm_90", sms=132, ghz=1.98, hbm_gbs=3350,
                 rates={"fp32": 128, "fp64": 64, "int multiply": 64, "special function": 16, "conversion": 16,
                        "other int/logic": 64, "memory": 32}),
}
GPUS["H200"] = dict(GPUS["H100"], hbm_gbs=4800)
ISSUE = 128  # thread-instructions per clock per SM: 4 schedulers x 32 lanes


def parse(text):
    """{(arch, function): [(address, predicated, opcode, operands)]} of a cuobjdump -sass listing."""
    funcs, arch, cur = {}, None, None
    for line in text.splitlines():
        if m := re.match(r"\s*arch = (sm_\d+)", line):
            arch = m.group(1)
        elif m := re.match(r"\s*Function : (\S+)", line):
            cur = funcs.setdefault((arch, m.group(1)), [])
        elif (m := re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z0-9_.]+)\s*(.*?)\s*;", line)) and cur is not None:
            cur.append((int(m.group(1), 16), bool(m.group(2)), m.group(3), m.group(4)))
    return funcs


STORE_BYTES = "bytes stored"  # along the path, to tell how many elements it handles
# Global loads and stores along the path: what tells vector from scalar access paths. Not all
# memory instructions: a loop that reloads a kernel parameter (LDC) is no less vectorized.
GLOBAL = "global accesses"


def _store_bytes(op):
    if not op.startswith(("STG", "ST.")):
        return 0
    m = re.search(r"\.(128|64|U16|S16|U8|S8)\b", op)
    return {"128": 16, "64": 8, "U16": 2, "S16": 2, "U8": 1, "S8": 1}[m.group(1)] if m else 4


def _target(operands):
    m = re.search(r"(0x[0-9a-f]+)\s*$", operands)
    return int(m.group(1), 16) if m else None


def path_counts(ins, loop=True):
    """Per-class counts along the counted path (module docstring) of one function: its grid-stride
    loop body when `loop`, else entry to exit; None if a loop is asked for and there is none. A
    kernel with a loop per access path (aligned or not) is counted on the loop whose path moves its
    bytes in the fewest memory instructions, then with the most arithmetic."""
    addr = [a for a, *_ in ins]
    index = {a: i for i, a in enumerate(addr)}
    if not loop:
        return _best_path(ins, index, 0, len(ins) - 1, loop)
    loops = [(index[_target(o)], i) for i, (a, _, op, o) in enumerate(ins)
             if op.startswith("BRA") and _target(o) is not None and _target(o) < a and _target(o) in index]
    paths = [_best_path(ins, index, h, e, loop) for h, e in loops
             if any(op.startswith("STG") for _, _, op, _ in ins[h:e])]
    paths = [c for c in paths if c and c[STORE_BYTES]]
    if not paths:
        return None
    return min(paths, key=lambda c: (c[GLOBAL] / c[STORE_BYTES],
                                     -sum(c[k] for k in ARITHMETIC) / c[STORE_BYTES]))


def _best_path(ins, index, lo, hi, loop):
    """path_counts' path through instructions lo..hi (a loop body when `loop`)."""
    # best[i]: (-global accesses, arithmetic, counts) of the best path from lo reaching instruction i.
    best = {lo: (0, 0, Counter())}
    end = None
    for i in range(lo, hi + 1):
        if i not in best:
            continue
        mem, arith, counts = best[i]
        _, pred, op, operands = ins[i]
        cls = _CLASS_OF.get(op.split(".")[0], "other int/logic")
        is_global = op.startswith(("LDG", "STG"))
        counts = counts + Counter({cls: 1, STORE_BYTES: _store_bytes(op), GLOBAL: int(is_global)})
        state = (mem - is_global, arith + (cls in ARITHMETIC), counts)
        nexts = []
        if op.startswith("BRA"):
            t = _target(operands)
            if t is not None and t in index and index[t] > i:
                nexts.append(index[t])
            if pred or "," in operands:  # conditional: may fall through
                nexts.append(i + 1)
            if i == hi:
                end = state if end is None or state[:2] > end[:2] else end
        elif op == "EXIT":
            if not loop:
                end = state if end is None or state[:2] > end[:2] else end
            if pred:
                nexts.append(i + 1)
        else:
            nexts.append(i + 1)
            if i == hi:
                end = state if end is None or state[:2] > end[:2] else end
        for j in nexts:
            if j <= hi and (j not in best or state[:2] > best[j][:2]):
                best[j] = state
    return end[2] if end else None


def _per_element(counts, elements):
    return {c: counts.get(c, 0) / elements for c in CLASSES}


# Outputs of each kernel and their element size by template argument: a path's stored bytes over
# (outputs x size) is the number of elements it handles (four a Philox counter, more if unrolled).
OUTPUTS = {s.name: len(s.returns) for s in SCHEMAS}
SIZE = {"float": 4, "double": 8, "__half": 2, "__nv_bfloat16": 2}


def _elements(kernel, counts):
    m = re.fullmatch(r"(\w+)_kernel(?:<(\w+)>)?", kernel)
    op, t = m.group(1), m.group(2)
    size = SIZE[t] if t else (8 if op == "philox4x32_10" else 4)  # philox: int64 words; noise: float32
    return counts[STORE_BYTES] / (OUTPUTS[op] * size)


def predict(per_elem, bytes_per_elem, gpu):
    """(bound, share of the memory roofline) of one element on one GPU."""
    g = GPUS[gpu]
    r = g["rates"]
    pipes = [sum(per_elem.values()) / ISSUE, (per_elem["fp32"] + per_elem["int multiply"]) / r["fp32"],
             *(per_elem[c] / r[c] for c in r)]
    compute_ns = max(pipes) / (g["sms"] * g["ghz"])
    memory_ns = bytes_per_elem / g["hbm_gbs"]
    bound = "memory" if memory_ns >= compute_ns else "compute"
    return bound, memory_ns / max(memory_ns, compute_ns)


def cuda_kernels(library=None):
    """{(arch, kernel): per-element class counts} of the library's kernels with a grid-stride loop."""
    from . import _C

    text = subprocess.run([cuobjdump(), "-sass", library or _C.__file__], capture_output=True, text=True,
                          check=True).stdout
    out = {}
    for (arch, name), ins in parse(text).items():
        counts = path_counts(ins, loop=True)
        if counts is not None:
            kernel = _short(name)
            out[(arch, kernel)] = _per_element(counts, _elements(kernel, counts))
    return out


def fused_float32(cuda, op):
    """{arch: counts} of op's float32 CUDA kernel among cuda_kernels() (noise's is not a template)."""
    return {a: c for (a, k), c in cuda.items() if k in (f"{op}_kernel<float>", f"{op}_kernel")}


def triton_counts(fn, sig, constexprs, arch, num_warps, per_thread, fp_fusion=False):
    """Per-element class counts of a Triton kernel compiled for sm_<arch> as launched on aligned
    tensors (triton_kernels/aot.py), its whole program over the `per_thread` elements a thread
    handles."""
    from .triton_kernels import aot

    cubin = aot.compile_for(fn, sig, constexprs, arch, num_warps, fp_fusion, aligned=True).asm["cubin"]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as fh:
            fh.write(cubin)
        text = subprocess.run([cuobjdump(), "-sass", path], capture_output=True, text=True, check=True).stdout
    ((_, ins),) = parse(text).items()
    return _per_element(path_counts(ins, loop=False), per_thread)


def triton_kernels():
    """{(arch, op): per-element class counts} of our Triton kernels, each fused op's predicted
    configuration (triton_kernels/configs.py, predicted()), compiled as they launch: without FP
    fusion (the contract's FMAs are explicit)."""
    from .triton_kernels import configs as triton_configs, kernels as K

    configs = {name: c for name, *c in triton_configs.configurations()}
    per_thread = lambda fn: (K.STEP_ROWS if fn is K.step_kernel else K.ROWS) * 4 / (32 * K.NUM_WARPS)  # noqa: E731
    return {(f"sm_{arch}", op): triton_counts(*configs[name], arch, K.NUM_WARPS, per_thread(configs[name][0]))
            for arch in (80, 90) for op, name in triton_configs.predicted().items()}


def report():
    cuda = cuda_kernels()
    lines = ["Instructions one thread executes per element in the steady state, by class (CUDA kernels: the "
             "grid-stride loop over four elements; Triton: the program over its elements a thread):", "",
             "| backend | kernel | arch | " + " | ".join(CLASSES) + " | total |",
             "| --- | --- | --- | " + " | ".join("---:" for _ in CLASSES) + " | ---: |"]
    rows = [("CUDA", k, a, c) for (a, k), c in sorted(cuda.items(), key=lambda x: (x[0][1], x[0][0]))]
    triton = triton_kernels()
    rows += [("Triton", op, a, c) for (a, op), c in sorted(triton.items(), key=lambda x: (x[0][1], x[0][0]))]
    for backend, k, a, c in rows:
        lines.append(f"| {backend} | {k} | {a} | " + " | ".join(f"{c[x]:.2f}" for x in CLASSES) +
                     f" | {sum(c.values()):.1f} |")
    lines += ["", "Predicted, not measured: each fused op at float32 on " + ", ".join(
              f"{gpu} ({g['arch']})" for gpu, g in GPUS.items()) + ", from the counts above (the method is in "
              "the text before this table).", "",
              "| op | backend | bytes/element | " + " | ".join(f"{gpu} bound | {gpu} share of memory roofline"
                                                          for gpu in GPUS) + " |",
              "| --- | --- | ---: | " + " | ".join("--- | ---:" for _ in GPUS) + " |"]
    for op, moved in ELEMENTS_MOVED.items():
        for backend, counts in (("CUDA", fused_float32(cuda, op)),
                                ("Triton", {a: c for (a, o), c in triton.items() if o == op})):
            cells = []
            for gpu, g in GPUS.items():
                if g["arch"] not in counts:  # a build for one arch (gpu_check --quick: the GPU present)
                    cells += ["not built", "-"]
                    continue
                bound, share = predict(counts[g["arch"]], 4 * moved, gpu)
                cells += [bound, f"{100 * share:.0f}%"]
            lines.append(f"| {op} | {backend} | {4 * moved} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


BEGIN, END = "<!-- sass tables: python -m dropgrad_cuda.cuda_build --sass --update-doc -->", "<!-- end of sass tables -->"


def update_doc(text, path=None, begin=BEGIN, end=END):
    """Replace the part of docs/gpu.md between the markers begin and end with text."""
    path = path or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "gpu.md")
    with open(path) as fh:
        doc = fh.read()
    i, j = doc.index(begin) + len(begin), doc.index(end)
    with open(path, "w") as fh:
        fh.write(doc[:i] + "\n" + text + "\n" + doc[j:])
