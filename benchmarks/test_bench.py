"""pytest-benchmark over benchmarks/cases.py; `python -m benchmarks.report` runs it and prints the table."""
import pytest
import torch

from benchmarks.cases import cases

CASES = cases()


@pytest.mark.parametrize("op,size,impl,factory", CASES, ids=[f"{o}|{s}|{i}" for o, s, i, _ in CASES])
def test_bench(benchmark, op, size, impl, factory):
    torch.set_num_threads(2)
    thunk = factory()
    benchmark.group = f"{op}|{size}"
    benchmark.extra_info.update(op=op, size=size, impl=impl)
    benchmark.pedantic(thunk, rounds=7, iterations=1, warmup_rounds=2)
