"""pytest-benchmark over benchmarks/cases.py; `python -m benchmarks.report` runs it and prints the tables."""
import pytest
import torch

from benchmarks.cases import cases

CASES = cases()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bench(benchmark, case):
    torch.set_num_threads(2)
    thunk = case.make()
    benchmark.group = f"{case.op}|{case.size}"
    benchmark.extra_info.update(op=case.op, size=case.size, impl=case.impl, dtype=str(case.dtype).split(".")[-1])
    benchmark.pedantic(thunk, rounds=7, iterations=1, warmup_rounds=2)
