"""Comparisons that hold up on a shared machine: variants timed in turn within every round
(ABCABC... after warm-up), so drift hits them alike, and each compared to a base by its paired
per-round differences, with a 95% confidence interval (Student's t over the rounds); ratios by their
median with a distribution-free interval (median_interval)."""
import math
import statistics
import time

# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom; 1.96 beyond.
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t95(df):
    return _T95[df - 1] if df <= len(_T95) else 1.96


def interval(samples):
    """(mean, low, high): the mean and its 95% confidence interval."""
    m = statistics.mean(samples)
    half = t95(len(samples) - 1) * statistics.stdev(samples) / math.sqrt(len(samples))
    return m, m - half, m + half


def compare(base, other):
    """other vs base over paired rounds: the median of each, the mean paired difference (other -
    base) with its 95% interval, and whether the interval excludes zero (a difference is resolved)."""
    mean, lo, hi = interval([b - a for a, b in zip(base, other)])
    return dict(median=statistics.median(other), base_median=statistics.median(base), diff=mean, low=lo, high=hi,
                resolved=lo > 0 or hi < 0)


def median_interval(samples):
    """(median, low, high): the median and a distribution-free 95% interval for it, the order
    statistics [x_(j), x_(n+1-j)] with the largest j whose coverage 1 - 2 P(Binomial(n, 1/2) < j)
    is at least 95%. It always holds the median, lies within the samples' range (so positive for
    positive samples), and a few outlying rounds move it no further than their rank: a mean's
    interval would stretch (or go negative) with one slow round. Below 6 samples not even the range
    reaches 95%: the range, min to max, is returned all the same (coverage 1 - 2^(1-n))."""
    x, n = sorted(samples), len(samples)
    j, below = 1, 1 / 2 ** n  # below = P(Binomial(n, 1/2) < j)
    while j < (n + 1) // 2 and 2 * (below + math.comb(n, j) / 2 ** n) <= 0.05:
        below += math.comb(n, j) / 2 ** n
        j += 1
    return statistics.median(x), x[j - 1], x[n - j]


def ratio_interval(a, b):
    """Median of a/b over paired rounds with its distribution-free 95% interval (median_interval)."""
    return median_interval([x / y for x, y in zip(a, b)])


def interleaved(variants, rounds, warmup=3, *, pairs=None, min_rounds=3, budget_s=None, progress=None):
    """{name: [seconds per round]}, the variants timed in turn within every round.

    With `pairs` [(a, b), ...]: after min_rounds, stop early once every pair's paired difference
    is resolved (its interval excludes zero) or the budget (seconds of timed rounds) is spent;
    `rounds` is then the most. progress(done_rounds, seconds_left_at_most) is called per round."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times = {k: [] for k in variants}
    t_start = time.perf_counter()
    for r in range(rounds):
        for k, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
        spent = time.perf_counter() - t_start
        done = r + 1
        if pairs and done >= min_rounds:
            resolved = all(compare(times[a], times[b])["resolved"] for a, b in pairs)
            if resolved or (budget_s is not None and spent >= budget_s):
                break
        if progress:
            left = min(rounds - done, math.ceil(((budget_s or math.inf) - spent) / (spent / done)))
            progress(done, max(left, 0) * spent / done)
    return times


def describe(c, unit="s", digits=3):
    """'+0.123 s (95% CI +0.100 to +0.146)', or 'no difference measurable (...)' when the interval includes 0."""
    ci = f"95% CI {c['low']:+.{digits}f} to {c['high']:+.{digits}f} {unit}"
    return f"{c['diff']:+.{digits}f} {unit} ({ci})" if c["resolved"] else f"no difference measurable ({ci})"
