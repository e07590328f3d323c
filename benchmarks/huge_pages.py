"""The 11M Gaussian update with and without DROPGRAD_THP=1 (huge-page outputs, read once per
process, so each setting runs in a process of its own): medians of 15 calls after 6 warm-up
calls, each beside the torch.add floor measured in the same process."""
import json
import os
import statistics
import subprocess
import sys
import time

import torch


def measure(n=11_000_000):
    import dropgrad_cuda as dg

    torch.set_num_threads(2)
    w, g = torch.randn(n), torch.randn(n)
    out = {}
    for name, fn in (("fused", lambda: dg.dropgrad_update(w, g, 0.01, 0.1, "gaussian")),
                     ("floor", lambda: torch.add(w, g, alpha=-0.01))):
        for _ in range(6):
            fn()
        ts = []
        for _ in range(15):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        out[name] = statistics.median(ts) * 1e3
        out[name + "_max"] = max(ts) * 1e3
    return out


def run(thp):
    env = dict(os.environ, DROPGRAD_THP="1" if thp else "0")
    out = subprocess.run([sys.executable, "-m", "benchmarks.huge_pages"], env=env, capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(measure()))
