"""The table of ops as Python reads it: the schemas of csrc/ops.cpp (`_C.op_schemas()`), from which
every Python list of ops derives (the public op names, the fakes, the bytes each op moves)."""
import torch

from . import _C

SCHEMAS = tuple(torch._C.parse_schema(s) for s in _C.op_schemas())
OP_NAMES = tuple(s.name for s in SCHEMAS)


def _is_tensor(arg):
    return str(arg.type) in ("Tensor", "List[Tensor]")


def tensor_arguments(schema):
    """The positions of schema's (lists of) tensor arguments, optional ones excluded."""
    return [i for i, a in enumerate(schema.arguments) if _is_tensor(a)]


# Arguments a kernel does not stream: `like` gives noise only its shape, and the learning rates are
# a scalar (or absent) in every predicted and benchmarked case.
_NOT_STREAMED = ("like", "lrs")


def _elements_moved(schema):
    """Elements of the op's dtype a fused kernel reads and writes once per element: each streamed
    tensor argument read once (and written once more if the op writes it in place), each output
    written once. A noise made in registers moves nothing."""
    args = [a for a in schema.arguments if _is_tensor(a) and a.name not in _NOT_STREAMED]
    return len(args) + sum(bool(a.alias_info and a.alias_info.is_write) for a in args) + len(schema.returns)


# The bytes-moved model of every op that draws noise and returns its result (the roofline
# predictions of sass.py and the benchmarks' bandwidth columns): its elements moved.
ELEMENTS_MOVED = {s.name: _elements_moved(s) for s in SCHEMAS
                  if s.returns and any(a.name == "seed" for a in s.arguments)}
