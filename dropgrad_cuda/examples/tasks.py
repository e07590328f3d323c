"""Few-shot tasks: two the package generates itself, so the example needs no download, and the
papers' two image datasets read from a folder the user has.

- Sinusoid regression (MAML, Finn et al. 2017): y = A sin(x - phase), A in [0.1, 5], phase in
  [0, pi], x in [-5, 5].
- Glyphs: N-way K-shot classification of 16x16 images of procedurally drawn characters. Each class
  is a fixed set of three strokes (line segments); each example redraws them with jittered end
  points, a random shift and pixel noise, so examples of one class vary like handwriting. Classes
  are split into disjoint meta-train and meta-test alphabets.
- Omniglot (MAML's protocol): torchvision's layout, `images_background/` and `images_evaluation/`
  of alphabet/character folders of 105x105 PNGs; 28x28, strokes 1 on 0; the 1623 characters
  shuffled once (seed 0), 1200 for meta-training and the rest for meta-test; each character
  rotated by 0, 90, 180 and 270 degrees gives four classes.
- mini-ImageNet (the Ravi-Larochelle split): `train.csv`, `val.csv`, `test.csv` of
  `filename,label` rows and an `images/` folder; RGB resized to 84x84, in [0, 1].
Images are read with PIL when a task first needs their class, then kept.
"""
import csv
import math
import os

import torch

SIZE = 16


class Sinusoid:
    name, metric, higher_is_better = "sinusoid", "MSE", False

    def __init__(self, shots=10, queries=10):
        self.shots, self.queries = shots, queries

    def sample(self, generator, split="train"):
        amp = torch.empty(1).uniform_(0.1, 5.0, generator=generator)
        phase = torch.empty(1).uniform_(0.0, math.pi, generator=generator)
        x = torch.empty(self.shots + self.queries, 1).uniform_(-5.0, 5.0, generator=generator)
        y = amp * torch.sin(x - phase)
        return x[: self.shots], y[: self.shots], x[self.shots:], y[self.shots:]


class Glyphs:
    name, metric, higher_is_better = "glyphs", "accuracy", True
    channels, size = 1, SIZE

    def __init__(self, ways=5, shots=1, queries=5, train_classes=400, test_classes=100, seed=0):
        self.ways, self.shots, self.queries = ways, shots, queries
        g = torch.Generator().manual_seed(seed)
        # Each class: 3 strokes, (x0, y0, x1, y1) in pixel units inside the canvas margin.
        self.strokes = torch.rand(train_classes + test_classes, 3, 4, generator=g) * (SIZE - 5) + 2.5
        self.splits = {"train": torch.arange(train_classes),
                       "test": torch.arange(train_classes, train_classes + test_classes)}
        yy, xx = torch.meshgrid(torch.arange(SIZE, dtype=torch.float32), torch.arange(SIZE, dtype=torch.float32),
                                indexing="ij")
        self.pixels = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1)  # (P, 2)

    def render(self, strokes, generator):
        """Images (B, 1, SIZE, SIZE) of stroke sets (B, 3, 4), each drawn with fresh jitter."""
        b = strokes.shape[0]
        s = strokes + 0.7 * torch.randn(strokes.shape, generator=generator)
        s = s + (torch.randint(-1, 2, (b, 1, 2), generator=generator).float()).repeat(1, 1, 2)
        a, d = s[..., None, :2], s[..., None, 2:] - s[..., None, :2]  # (B, 3, 1, 2)
        p = self.pixels[None, None]  # (1, 1, P, 2)
        t = (((p - a) * d).sum(-1) / (d * d).sum(-1).clamp_min(1e-6)).clamp(0, 1)
        dist = (p - (a + t[..., None] * d)).norm(dim=-1).min(dim=1).values  # (B, P)
        img = torch.exp(-(dist / 0.8) ** 2) + 0.1 * torch.randn(dist.shape, generator=generator)
        return img.reshape(b, 1, SIZE, SIZE)

    def sample(self, generator, split="train"):
        pool = self.splits[split]
        classes = pool[torch.randperm(len(pool), generator=generator)[: self.ways]]
        n = self.shots + self.queries
        labels = torch.arange(self.ways).repeat_interleave(n)
        x = self.render(self.strokes[classes].repeat_interleave(n, dim=0), generator)
        support = (torch.arange(len(labels)) % n) < self.shots
        return x[support], labels[support], x[~support], labels[~support]


class _ImageClasses:
    """N-way K-shot tasks over classes of image files. self.splits maps a split to a list of
    classes; a class is (list of image paths, quarter turns)."""
    metric, higher_is_better = "accuracy", True
    size = channels = None

    def __init__(self, ways, shots, queries):
        self.ways, self.shots, self.queries = ways, shots, queries
        self._cache = {}
        for split, classes in self.splits.items():
            if len(classes) < ways:
                raise ValueError(f"{self.name}: the {split} split has {len(classes)} classes, fewer than --ways {ways}")
            short = min(len(paths) for paths, _ in classes)
            if short < shots + queries:
                raise ValueError(f"{self.name}: a {split} class has {short} images, fewer than shots + queries = "
                                 f"{shots + queries}")

    def _load(self, path):
        try:
            with _pil().open(path) as im:
                im = im.convert("L" if self.channels == 1 else "RGB").resize((self.size, self.size), self.resample)
                x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).float().div_(255)
        except OSError as e:  # PIL's UnidentifiedImageError (empty or corrupt file) is an OSError
            raise UnreadableImage(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
        return x.reshape(self.size, self.size, self.channels).permute(2, 0, 1)

    def images(self, paths):
        """(len(paths), C, size, size), read once."""
        key = tuple(paths)
        if key not in self._cache:
            self._cache[key] = torch.stack([self._load(p) for p in paths])
        return self._cache[key]

    def sample(self, generator, split="train"):
        classes = self.splits[split]
        n = self.shots + self.queries
        xs, xq = [], []
        for c in torch.randperm(len(classes), generator=generator)[: self.ways].tolist():
            paths, turns = classes[c]
            x = self.images(paths)[torch.randperm(len(paths), generator=generator)[:n]]
            x = self.transform(torch.rot90(x, turns, dims=(-2, -1)))
            xs.append(x[: self.shots])
            xq.append(x[self.shots:])
        labels = torch.arange(self.ways)
        return (torch.cat(xs), labels.repeat_interleave(self.shots), torch.cat(xq),
                labels.repeat_interleave(self.queries))

    def transform(self, x):
        return x


class UnreadableImage(ValueError):
    """An image file of the dataset that PIL cannot read; the example stops with this one line."""


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("the image datasets are read with Pillow: pip install pillow") from None
    return Image


def _folders(path):
    """The sub-folders of path, sorted; files beside them (macOS's .DS_Store) are skipped, as
    torchvision's loaders skip them."""
    return sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))


def _need(path, what):
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: {what}")


class Omniglot(_ImageClasses):
    name, size, channels = "omniglot", 28, 1
    LAYOUT = ("torchvision's Omniglot layout: images_background/ and images_evaluation/, each of "
              "alphabet/character/ folders of PNGs")
    TRAIN_CHARACTERS = 1200  # of 1623

    def __init__(self, root, ways=5, shots=1, queries=15):
        self.resample = _pil().LANCZOS
        if os.path.isdir(os.path.join(root, "omniglot-py")):  # torchvision's download folder
            root = os.path.join(root, "omniglot-py")
        characters = []
        for part in ("images_background", "images_evaluation"):
            top = os.path.join(root, part)
            _need(top, self.LAYOUT)
            for alphabet in _folders(top):
                for char in _folders(os.path.join(top, alphabet)):
                    folder = os.path.join(top, alphabet, char)
                    pngs = sorted(f for f in os.listdir(folder) if f.endswith(".png"))
                    if pngs:
                        characters.append([os.path.join(folder, f) for f in pngs])
        if not characters:
            raise FileNotFoundError(f"{root}: no PNG images found ({self.LAYOUT})")
        order = torch.randperm(len(characters), generator=torch.Generator().manual_seed(0)).tolist()
        # The full dataset splits 1200 / 423; a partial one in the same proportion.
        n_train = self.TRAIN_CHARACTERS if len(characters) >= 1623 else round(len(characters) * 1200 / 1623)
        split = {"train": order[:n_train], "test": order[n_train:]}
        self.splits = {s: [(characters[i], k) for i in idx for k in range(4)] for s, idx in split.items()}
        super().__init__(ways, shots, queries)

    def transform(self, x):
        return 1.0 - x  # Omniglot draws black strokes on white


class MiniImageNet(_ImageClasses):
    name, size, channels = "mini-imagenet", 84, 3
    LAYOUT = "the Ravi-Larochelle split: train.csv, val.csv, test.csv (filename,label rows) and images/"

    def __init__(self, root, ways=5, shots=1, queries=15):
        self.resample = _pil().BILINEAR
        self.splits = {}
        for split in ("train", "test"):
            path = os.path.join(root, f"{split}.csv")
            _need(path, self.LAYOUT)
            by_label = {}
            with open(path, newline="") as fh:
                for row in csv.DictReader(fh):
                    if "filename" not in row or "label" not in row:
                        raise ValueError(f"{path}: expected a header 'filename,label' ({self.LAYOUT})")
                    image = os.path.join(root, "images", row["filename"])
                    _need(image, f"listed in {path}")
                    by_label.setdefault(row["label"], []).append(image)
            self.splits[split] = [(paths, 0) for _, paths in sorted(by_label.items())]
        super().__init__(ways, shots, queries)


TASKS = {"sinusoid": Sinusoid, "glyphs": Glyphs, "omniglot": Omniglot, "mini-imagenet": MiniImageNet}
