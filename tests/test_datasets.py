"""The example on the papers' datasets, in their real folder layouts (tiny generated copies: a few
classes of a few images each), and the presets' wiring on them."""
import csv
import json

import pytest
import torch

from dropgrad_cuda.examples import few_shot
from dropgrad_cuda.examples.tasks import MiniImageNet, Omniglot

Image = pytest.importorskip("PIL.Image", reason="the image datasets need Pillow")
# Short runs: the 84x84 second-order meta-iterations cost seconds each on these 2-core machines.
TINY = ["--iterations", "2", "--test-tasks", "2", "--mc-test-samples", "1", "--meta-batch", "1", "--steps", "1",
        "--no-progress"]


def _png(path, size, mode, seed):
    g = torch.Generator().manual_seed(seed)
    channels = 1 if mode == "L" else 3
    pixels = (torch.rand(size, size, channels, generator=g) * 255).to(torch.uint8).squeeze(-1).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path)


@pytest.fixture(scope="module")
def omniglot(tmp_path_factory):
    """torchvision's layout: images_{background,evaluation}/alphabet/character/*.png, 105x105."""
    root = tmp_path_factory.mktemp("omniglot")
    for part, alphabets in (("images_background", ("Latin", "Greek")), ("images_evaluation", ("Futurama",))):
        for a in alphabets:
            for c in range(3):
                for i in range(4):
                    _png(root / part / a / f"character{c + 1:02d}" / f"{c:04d}_{i + 1:02d}.png", 105, "1", hash((a, c, i)) % 1000)
    return root


@pytest.fixture(scope="module")
def mini_imagenet(tmp_path_factory):
    """The Ravi-Larochelle split: {train,val,test}.csv of filename,label rows and images/."""
    root = tmp_path_factory.mktemp("mini")
    for split, labels in (("train", ("n01", "n02", "n03")), ("val", ("n04",)), ("test", ("n05", "n06", "n07"))):
        with open(root / f"{split}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["filename", "label"])
            for label in labels:
                for i in range(3):
                    name = f"{label}{i:08d}.jpg"
                    _png(root / "images" / name, 96, "RGB", hash(name) % 1000)
                    w.writerow([name, label])
    return root


def test_omniglot_follows_maml_protocol(omniglot):
    task = Omniglot(str(omniglot), ways=5, shots=1, queries=2)
    # 9 characters, 9 * 1200 / 1623 -> 7 for meta-training; four rotations each are classes.
    assert len(task.splits["train"]) == 4 * 7 and len(task.splits["test"]) == 4 * 2
    xs, ys, xq, yq = task.sample(torch.Generator().manual_seed(0), "train")
    assert xs.shape == (5, 1, 28, 28) and xq.shape == (10, 1, 28, 28)
    assert ys.tolist() == list(range(5)) and yq.tolist() == [c for c in range(5) for _ in range(2)]
    assert 0 <= xs.min() and xs.max() <= 1
    turns = {}
    for paths, k in task.splits["train"] + task.splits["test"]:
        turns.setdefault(tuple(paths), []).append(k)
    assert len(turns) == 9 and all(sorted(t) == [0, 1, 2, 3] for t in turns.values())
    train_chars = {tuple(p) for p, _ in task.splits["train"]}
    assert not train_chars & {tuple(p) for p, _ in task.splits["test"]}
    # A class turned by k quarter turns is its images rotated: sampled with one class per task.
    one = Omniglot(str(omniglot), ways=2, shots=1, queries=2)
    one.splits["train"] = [task.splits["train"][0], (task.splits["train"][0][0], 1)]
    xs, _, _, _ = one.sample(torch.Generator().manual_seed(3), "train")
    base = 1.0 - one.images(task.splits["train"][0][0])
    assert any(torch.equal(xs[1], torch.rot90(b, 1, dims=(-2, -1))) for b in base)


def test_mini_imagenet_reads_the_csv_split(mini_imagenet):
    task = MiniImageNet(str(mini_imagenet), ways=3, shots=1, queries=2)
    assert [len(task.splits[s]) for s in ("train", "test")] == [3, 3]
    xs, ys, xq, yq = task.sample(torch.Generator().manual_seed(0), "test")
    assert xs.shape == (3, 3, 84, 84) and xq.shape == (6, 3, 84, 84)
    train_files = {p for paths, _ in task.splits["train"] for p in paths}
    test_files = {p for paths, _ in task.splits["test"] for p in paths}
    assert not train_files & test_files


@pytest.mark.parametrize("task,methods", [("omniglot", "none,meta-dropout,cml"),
                                          ("mini-imagenet", "dropgrad-gaussian,cml")])
def test_example_runs_on_the_dataset_folders(task, methods, omniglot, mini_imagenet, tmp_path):
    root = omniglot if task == "omniglot" else mini_imagenet
    few_shot.main(TINY + ["--ways", "3", "--queries", "2", "--task", task, "--data-root", str(root), "--methods",
                          methods, "--out", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert [r["method"] for r in results] == methods.split(",")
    assert all(len(r["curve"]) == 2 and 0 <= r["mean"] <= 100 for r in results)


@pytest.mark.parametrize("flags,says", [
    (["--task", "omniglot"], "needs --data-root"),
    (["--task", "omniglot", "--data-root", "/nonexistent"], "images_background"),
    (["--task", "mini-imagenet", "--data-root", "/nonexistent"], "train.csv"),
    (["--task", "glyphs", "--data-root", "/tmp"], "--data-root is for"),
])
def test_dataset_flags_say_what_is_missing(flags, says, capsys):
    with pytest.raises(SystemExit) as e:
        few_shot.parse(flags)
    assert e.value.code == 2 and says in capsys.readouterr().err


def test_a_missing_image_is_named(mini_imagenet, tmp_path, capsys):
    (tmp_path / "images").mkdir()
    for split in ("train", "val", "test"):
        (tmp_path / f"{split}.csv").write_text("filename,label\nmissing.jpg,n01\n")
    with pytest.raises(SystemExit):
        few_shot.parse(["--task", "mini-imagenet", "--data-root", str(tmp_path)])
    assert "missing.jpg is missing" in capsys.readouterr().err


def test_too_few_classes_for_the_ways_is_refused(mini_imagenet, capsys):
    with pytest.raises(SystemExit):
        few_shot.parse(["--task", "mini-imagenet", "--data-root", str(mini_imagenet), "--ways", "5"])
    assert "fewer than --ways 5" in capsys.readouterr().err


@pytest.mark.parametrize("preset", sorted(few_shot.PRESETS))
def test_presets_set_the_papers_hyperparameters_and_run(preset, omniglot, mini_imagenet, tmp_path):
    values = few_shot.PRESETS[preset]
    root = omniglot if values["task"] == "omniglot" else mini_imagenet
    # The tiny folders hold 3 classes of 3-4 images: the task shape and length are overridden.
    flags = ["--preset", preset, "--data-root", str(root), "--ways", "3", "--shots", "1", "--queries", "2",
             "--iterations", "1", "--out", str(tmp_path)] + TINY[2:]
    args = few_shot.parse(flags)
    for key, want in values.items():
        if key not in ("target", "ways", "shots", "queries", "steps", "meta_batch", "iterations", "test_tasks",
                       "mc_test_samples"):
            got = args.methods if key == "methods" else getattr(args, key)
            assert got == (want.split(",") if key == "methods" else want), key
    assert few_shot.parse(flags + ["--meta-lr", "0.5"]).meta_lr == 0.5  # an explicit flag beats the preset
    few_shot.main(flags)
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert [r["method"] for r in results] == values["methods"].split(",")


def test_files_beside_the_omniglot_folders_are_skipped(omniglot, tmp_path):
    """macOS writes .DS_Store into every folder it shows (main: '[Errno 20] Not a directory')."""
    import shutil
    root = tmp_path / "omniglot"
    shutil.copytree(omniglot, root)
    for folder in (root / "images_background", root / "images_background" / "Latin", root / "images_evaluation"):
        (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    task = Omniglot(str(root), ways=5, shots=1, queries=2)
    assert [len(task.splits[s]) for s in ("train", "test")] == [4 * 7, 4 * 2]  # the 9 characters, as without


def test_an_unreadable_image_stops_training_with_one_line_naming_it(omniglot, tmp_path):
    """A zero-byte PNG in a sampled class (main: PIL's UnidentifiedImageError traceback mid-training)."""
    import shutil
    root = tmp_path / "omniglot"
    shutil.copytree(omniglot, root)
    broken = sorted(root.glob("images_*/*/*/*.png"))
    for path in broken:
        path.write_bytes(b"")
    with pytest.raises(SystemExit) as e:
        few_shot.main(TINY + ["--ways", "3", "--queries", "2", "--task", "omniglot", "--data-root", str(root),
                              "--methods", "none", "--out", str(tmp_path / "out")])
    message = str(e.value.code)
    assert message.startswith("few_shot: ") and "\n" not in message and "not a readable image" in message
    assert any(str(p) in message for p in broken)
