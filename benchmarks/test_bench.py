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
    # Large cases get 6 warm-up and 15 timed rounds: on this VM the first few calls that fault in
    # fresh memory (huge pages above all) are several times slower than the steady state, and
    # bursts of slow faults later last several calls, which 7 rounds cannot outvote.
    small = case.size in SMALL
    benchmark.pedantic(thunk, rounds=7 if small else 15, iterations=50 if small else 1,
                       warmup_rounds=2 if small else 6)
