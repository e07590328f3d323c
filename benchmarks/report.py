"""The main job: run the benchmarks once (pytest-benchmark) and print medians and ratios.

Ratios come from one run on this machine; absolute times on shared machines drift, ratios less.
    python -m benchmarks.report [-k PATTERN]     (JSON written to results/benchmarks.json)
"""
import argparse
import json
import os
import sys
from collections import defaultdict

import pytest

RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results")


def table(data):
    rows = defaultdict(dict)
    for b in data["benchmarks"]:
        e = b["extra_info"]
        rows[(e["op"], e["size"])][e["impl"]] = b["stats"]["median"] * 1e3
    lines = ["| op | size | fused ms | eager ms | compile ms | floor ms | eager/fused | compile/fused | fused/floor |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    fmt = lambda v: f"{v:.2f}" if v is not None else "-"  # noqa: E731
    ratio = lambda a, b: f"{a / b:.2f}x" if a is not None and b is not None else "-"  # noqa: E731
    for (op, size), r in rows.items():
        fu, ea, co, fl = (r.get(k) for k in ("fused", "eager", "compile", "floor"))
        lines.append(f"| {op} | {size} | {fmt(fu)} | {fmt(ea)} | {fmt(co)} | {fmt(fl)} | {ratio(ea, fu)} | "
                     f"{ratio(co, fu)} | {ratio(fu, fl)} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-k", default=None, help="only the cases whose id matches this pytest -k expression")
    args = ap.parse_args(argv)
    os.makedirs(RESULTS, exist_ok=True)
    out = os.path.join(RESULTS, "benchmarks.json")
    pytest_args = [os.path.join(os.path.dirname(__file__), "test_bench.py"), "-q", "-p", "no:cacheprovider",
                   f"--benchmark-json={out}", "--benchmark-disable-gc", "--benchmark-columns=median,iqr,rounds"]
    if args.k:
        pytest_args += ["-k", args.k]
    code = pytest.main(pytest_args)
    if code != 0:
        return int(code)
    with open(out) as fh:
        data = json.load(fh)
    md = table(data)
    cpu = data["machine_info"].get("cpu", {}).get("brand_raw", "?")
    print(f"\nMedians of 7 rounds, 2 threads, float32, on {cpu}; ratios from this one run.\n")
    print(md)
    with open(os.path.join(RESULTS, "benchmarks.md"), "w") as fh:
        fh.write(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
