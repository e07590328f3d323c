"""Few-shot tasks the package generates itself, so the example needs no download.

- Sinusoid regression (MAML, Finn et al. 2017): y = A sin(x - phase), A in [0.1, 5], phase in
  [0, pi], x in [-5, 5].
- Glyphs: N-way K-shot classification of 16x16 images of procedurally drawn characters. Each class
  is a fixed set of three strokes (line segments); each example redraws them with jittered end
  points, a random shift and pixel noise, so examples of one class vary like handwriting. Classes
  are split into disjoint meta-train and meta-test alphabets.
"""
import math

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


TASKS = {"sinusoid": Sinusoid, "glyphs": Glyphs}
