"""What a new user does first, run inside a fresh venv holding only the installed wheel and its
declared dependencies (scripts/compat.sh wheel); nothing of the source tree is importable."""
import os
import subprocess
import sys
import tempfile

import torch

import dropgrad_cuda as dg

here = os.path.dirname(os.path.abspath(dg.__file__))
assert "site-packages" in here, f"dropgrad_cuda imported from {here}, not from the installed wheel"

w, g, f = torch.randn(37), torch.randn(37), torch.randn(37)
for backend in ("cpu", "reference"):
    assert dg.drop_grad(g, 0.1, seed=1, backend=backend).shape == g.shape
    dg.dropgrad_update(w, g, 0.1, 0.1, seed=1, backend=backend)
    dg.dropgrad_step([w, f], [g, g], 0.1, 0.1, seed=1, backend=backend)
    dg.meta_dropout(f, g, seed=1, backend=backend)
    dg.logit_noise(torch.randn(4, 3), torch.randn(4, 1), seed=1, backend=backend)
    dg.philox4x32_10(torch.zeros(2, 4, dtype=torch.int64), torch.ones(2, 2, dtype=torch.int64), backend=backend)
assert torch.equal(dg.drop_grad(g, 0.1, seed=1), dg.drop_grad(g, 0.1, seed=1, backend="reference"))
if dg.cuda_emulator_built():
    assert torch.equal(dg.drop_grad(g, 0.1, seed=1, backend="cuda-emulated"), dg.drop_grad(g, 0.1, seed=1))

import dropgrad_cuda.integrations.func  # noqa: E402,F401
import dropgrad_cuda.integrations.learn2learn  # noqa: E402,F401
import dropgrad_cuda.integrations.torchmeta  # noqa: E402,F401
import dropgrad_cuda.nn  # noqa: E402,F401

try:
    import higher  # noqa: F401
except ImportError:
    try:
        import dropgrad_cuda.integrations.higher  # noqa: F401
    except ImportError as e:
        assert "pip install higher" in str(e), e
    else:
        raise AssertionError("the higher integration imported without higher")

example = [sys.executable, "-m", "dropgrad_cuda.examples.few_shot"]
subprocess.run(example + ["--help"], check=True, capture_output=True)
with tempfile.TemporaryDirectory() as out:
    run = subprocess.run(example + ["--iterations", "2", "--test-tasks", "2", "--mc-test-samples", "1",
                                    "--no-progress", "--out", out], check=True, capture_output=True, text=True)
    assert "| glyphs (accuracy) | cml |" in run.stdout, run.stdout

# Triton's interpreter runs the Triton kernels on CPU tensors; it needs numpy.
env = dict(os.environ, TRITON_INTERPRET="1")
code = ("import torch, dropgrad_cuda as dg; g = torch.randn(37); "
        "assert torch.equal(dg.drop_grad(g, 0.1, seed=1, backend='triton'), dg.drop_grad(g, 0.1, seed=1))")
run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
try:
    import numpy  # noqa: F401
    assert run.returncode == 0, run.stderr
    print("wheel smoke test passed (Triton interpreter included)")
except ImportError:
    assert "numpy" in run.stderr, run.stderr
    print("wheel smoke test passed (Triton interpreter: refused without numpy, as stated)")
