"""The end-to-end example runs every method, writes its table, JSON and plot, and trains one
model across two processes (gloo) with different noise per process."""
import json
import math
import os
import subprocess
import sys

import pytest

from dropgrad_cuda.examples import few_shot
from dropgrad_cuda.examples.tasks import Glyphs

TINY = ["--iterations", "3", "--test-tasks", "4", "--mc-test-samples", "2", "--no-progress"]


def test_example_runs_every_method_and_writes_its_report(tmp_path, capsys):
    few_shot.main(TINY + ["--out", str(tmp_path)])
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert [(r["task"], r["method"]) for r in results] == [(t, m) for t in ("sinusoid", "glyphs")
                                                            for m in few_shot.METHODS]
    for r in results:
        assert len(r["curve"]) == 3 and r["ci95"] >= 0 and f"| {r['method']} |" in out
        assert 0 <= r["mean"] <= 100 if r["metric"] == "accuracy" else r["mean"] >= 0
    assert (tmp_path / "learning_curves.png").stat().st_size > 10_000


@pytest.mark.parametrize("flags,says", [
    (["--methods", "dropout"], "--methods"), (["--p", "1.0"], "--p"), (["--iterations", "0"], "--iterations"),
    (["--iterations", "-2"], "--iterations"), (["--test-tasks", "0"], "--test-tasks"),
    (["--test-tasks", "1"], "--test-tasks"), (["--mc-test-samples", "0"], "--mc-test-samples"),
    (["--meta-batch", "0"], "--meta-batch"), (["--methods", ""], "--methods"), (["--methods", ","], "--methods"),
    (["--device", "mps"], "--device"), (["--device", "nonsense"], "--device"), (["--meta-lr", "0"], "--meta-lr"),
    (["--vmap", "--methods", "cml"], "--vmap"), (["--out", "/proc/no-such-folder"], "--out"),
    (["--inner-lr", "0"], "--inner-lr"), (["--inner-lr", "nan"], "--inner-lr"), (["--grad-clip", "-1"], "--grad-clip"),
    (["--ways", "1"], "--ways"), (["--shots", "0"], "--shots"), (["--queries", "0"], "--queries"),
    (["--steps", "0"], "--steps"), (["--preset", "maml-imagenet"], "--preset"),
])
def test_example_rejects_bad_flags_before_any_work(flags, says, capsys):
    with pytest.raises(SystemExit) as e:
        few_shot.parse(flags)
    assert e.value.code == 2 and says in capsys.readouterr().err  # argparse's own error, naming the flag


def test_example_vmap_meta_batch_equals_the_task_loop(tmp_path):
    """--vmap adapts the meta-batch under one vmap; without noise its learning curve is the loop's.
    (Sinusoid: the glyph net's batch norm has a batched-backward defect in PyTorch, functorch#534.)"""
    curves = []
    for extra in ([], ["--vmap"]):
        out = tmp_path / str(len(extra))
        few_shot.main(TINY + ["--task", "sinusoid", "--methods", "none", "--out", str(out)] + extra)
        curves.append(json.loads((out / "results.json").read_text())["results"][0]["curve"])
    assert curves[0] == pytest.approx(curves[1], rel=1e-6)
    few_shot.main(TINY + ["--task", "glyphs", "--methods", "dropgrad-gaussian,meta-dropout", "--vmap", "--out",
                          str(tmp_path / "glyphs")])


def test_glyph_tasks_are_disjoint_and_labelled():
    import torch
    task = Glyphs(ways=5, shots=2, queries=3)
    xs, ys, xq, yq = task.sample(torch.Generator().manual_seed(0), "test")
    assert xs.shape == (10, 1, 16, 16) and xq.shape == (15, 1, 16, 16)
    assert ys.bincount().tolist() == [2] * 5 and yq.bincount().tolist() == [3] * 5
    assert not set(task.splits["train"].tolist()) & set(task.splits["test"].tolist())


def test_example_under_torchrun_with_two_processes(tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "dropgrad_cuda.examples.few_shot", *TINY,
           "--methods", "dropgrad-gaussian,meta-dropout", "--out", str(tmp_path)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for a, b in zip(*ranks):
        assert a["param_checksum"] == b["param_checksum"]  # gradients all-reduced: one model
        assert a["noise_seed"] != b["noise_seed"]  # each process draws its own noise and tasks
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["world_size"] == 2
    assert all(r["ci95"] == r["ci95"] for r in results["results"])  # rank 0's meta-test, not a skipped rank's NaN
    assert "| meta-dropout |" in proc.stdout and proc.stdout.count("| task | method |") == 1  # one table, once


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_example_on_cuda(tmp_path):
    few_shot.main(TINY + ["--device", "cuda", "--methods", "dropgrad-gaussian,meta-dropout", "--out", str(tmp_path)])
    assert (tmp_path / "results.json").exists()


def test_readme_short_example_table_holds_on_this_machine():
    """The README's short-configuration table against two fresh runs here: the runs agree bit for bit,
    every row lies within the tolerance its 95% intervals give, beats a model that learned nothing,
    and every regularizer changes training (readme's docstring says why these and not the bits).
    `python -m dropgrad_cuda.examples.readme README.md` checks the default run's table too."""
    from dropgrad_cuda.examples import readme

    text = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")).read()
    marked = readme.tables(text)
    assert len(marked) == 2 and all(len(rows) == 12 for _, rows in marked)
    assert readme.check(text, short_only=True) == []


def _run(task="glyphs", method="none", mean=50.0, ci=5.0, gain=30.0, curve=(2.0, 1.5)):
    """A fresh run's result as few_shot writes it, with 20 test tasks whose scores spread around mean."""
    scores = [mean + (-1) ** i * (i % 5) for i in range(20)]
    gains = [gain + (i * 7 % 5) - 2 for i in range(20)]  # standard error 0.32: 2.1 of them is 0.68
    sign = 1 if task == "glyphs" else -1
    return dict(task=task, method=method, metric="accuracy" if task == "glyphs" else "MSE", mean=mean, ci95=ci,
                curve=list(curve), seconds=1.0, scores=scores, trivial_scores=[s - sign * g for s, g in zip(scores, gains)],
                higher_is_better=task == "glyphs")


def _rows(results, moved=0.0):
    """The README's rows for results, each mean moved by `moved` times its tolerance hypot(ci, ci)."""
    head = [["task", "method", "meta-test", "95% CI"], ["---"] * 4]
    return head + [[f"{r['task']} ({r['metric']})", r["method"], f"{r['mean'] + moved * math.hypot(r['ci95'], r['ci95']):.3f}",
                    f"±{r['ci95']:.3f}"] for r in results]


@pytest.mark.parametrize("breakage,says", [
    ("none", None),
    ("nondeterministic", "not deterministic"),
    ("far from the README", "in the README"),
    ("within the combined interval", None),
    ("at chance", "learned nothing"),
    ("regression at chance", "learned nothing"),
    ("a regularizer without effect", "no effect"),
    ("other rows", "other tasks or methods"),
])
def test_readme_table_check_fails_on_real_regressions(breakage, says):
    """The check of the README's tables catches a broken training, a row at chance level, a
    regularizer that no longer changes anything, a row that moved beyond what its intervals allow
    and a non-deterministic run; it lets through a row that moved within them (another CPU)."""
    from dropgrad_cuda.examples import readme

    run = [_run(), _run(method="dropgrad-binary", curve=(2.0, 1.4)), _run("sinusoid", mean=3.0, ci=1.0, gain=1.0)]
    rows, second = _rows(run), [dict(r) for r in run]
    if breakage == "nondeterministic":
        second[0] = dict(second[0], curve=[2.0, 1.5000001])
    elif breakage == "far from the README":
        rows = _rows(run, moved=1.01)
    elif breakage == "within the combined interval":
        rows = _rows(run, moved=0.99)
    elif breakage == "at chance":
        run[1] = second[1] = dict(run[1], trivial_scores=run[1]["scores"])
    elif breakage == "regression at chance":
        run[2] = second[2] = _run("sinusoid", mean=3.0, ci=1.0, gain=0.6)
    elif breakage == "a regularizer without effect":
        run[1] = second[1] = dict(run[1], curve=run[0]["curve"])
    elif breakage == "other rows":
        rows = rows[:3] + rows[4:] + rows[3:4]
    found = readme.problems(rows, [run, second])
    assert (found == []) if says is None else (found and all(says in f for f in found)), found


def test_readme_puts_install_and_the_three_commands_first():
    """A newcomer's first screen: the install line and the three commands (main job, tests, GPU
    check) within the first 60 lines, the whole README under 2,000 words, and CI's .ci/run calling
    the README's test command."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = open(os.path.join(root, "README.md")).read()
    first = text.splitlines()[:60]
    for command in ("pip install --no-build-isolation .", "bash scripts/bench.sh", "bash scripts/test.sh",
                    "bash scripts/gpu_check.sh --python"):
        assert any(line.strip().startswith(command) for line in first), command
    assert len(text.split()) < 2000
    ci = open(os.path.join(root, ".ci", "run")).read()
    assert "exec bash scripts/test.sh" in ci
