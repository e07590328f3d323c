"""The benchmarks' intervals: a ratio's interval is always possible (positive, holding its median),
however skewed the rounds."""
import math
import random

import pytest

from benchmarks.interleave import median_interval, ratio_interval


def test_a_slow_round_leaves_the_ratio_interval_possible():
    med, lo, hi = ratio_interval([1.0] * 29 + [50.0], [1.0] * 30)
    assert 0 < lo <= med <= hi and (med, lo, hi) == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("n", [1, 2, 5, 6, 9, 10, 17, 30, 101])
def test_median_interval_is_order_statistics_with_95_percent_coverage(n):
    x = random.Random(n).sample(range(1000), n)
    med, lo, hi = median_interval([v + 1 for v in x])
    s = sorted(v + 1 for v in x)
    j = s.index(lo) + 1
    assert lo <= med <= hi and hi == s[n - j]  # symmetric ranks, within the range
    coverage = lambda j: 1 - 2 * sum(math.comb(n, k) for k in range(j)) / 2 ** n
    if n >= 6:  # below 6 even the range covers less than 95%: it is returned all the same
        assert coverage(j) >= 0.95 and (j + 1 > (n + 1) // 2 or coverage(j + 1) < 0.95)  # the tightest such
    else:
        assert j == 1


def test_median_interval_covers_the_median_95_percent_of_the_time():
    """Monte Carlo over a skewed (log-normal) distribution, median 1: coverage 0.95-0.99."""
    rng = random.Random(0)
    hits = sum(lo <= 1.0 <= hi for lo, hi in (median_interval([rng.lognormvariate(0, 1) for _ in range(20)])[1:]
                                            for _ in range(4000)))
    assert 0.95 <= hits / 4000 <= 0.99  # the exact coverage at n = 20 is 0.9586; 4000 draws: ±0.0062 at 2 sigma
