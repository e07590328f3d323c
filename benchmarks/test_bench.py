"""pytest-benchmark over benchmarks/cases.py; `python -m benchmarks.report` runs it and prints the tables."""
import pytest
import torch

from benchmarks.cases import cases

CASES = cases()
SMALL = {"4K", "112K", "conv4-list"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bench(benchmark, case):
    torch.set_num_threads(2)
    thunk = case.make()
    benchmark.group = f"{case.op}|{case.size}"
    benchmark.extra_info.update(op=case.op, size=case.size, impl=case.impl, dtype=str(case.dtype).split(".")[-1])
    # Sub-millisecond cases repeat 50 times a round, so the timer's resolution and jitter do not decide them.
    iterations = 50 if case.size in SMALL else 1
    benchmark.pedantic(thunk, rounds=7, iterations=iterations, warmup_rounds=2)
