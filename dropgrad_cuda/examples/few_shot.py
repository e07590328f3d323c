"""Second-order MAML on few-shot tasks with each regularizer of the package, end to end.

    python -m dropgrad_cuda.examples.few_shot                       # every method on both tasks
    python -m dropgrad_cuda.examples.few_shot --task glyphs --methods none,dropgrad-gaussian
    torchrun --nproc_per_node 2 -m dropgrad_cuda.examples.few_shot  # meta-batch split over 2 processes (gloo)

Methods: none (plain MAML), dropgrad-binary, dropgrad-gaussian (noise on every inner update while
meta-training), meta-dropout (learned multiplicative noise on each hidden block and additive logit
noise; sampled on support passes with S Monte Carlo samples, deterministic on query passes), cml (a
co-learner head adds its loss to the outer loss and is dropped before meta-test). Prints a table of
meta-test results with 95% confidence intervals and writes results.json and learning_curves.png.
"""
import argparse
import json
import math
import os
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .. import nn as dnn
from ..integrations import func
from .tasks import TASKS, UnreadableImage

METHODS = ("none", "dropgrad-binary", "dropgrad-gaussian", "meta-dropout", "cml")
DROPGRAD_MODE = {"dropgrad-binary": "bernoulli", "dropgrad-gaussian": "gaussian"}
# Per task: inner lr, inner steps (meta-train and meta-test), meta-iterations of the default run,
# and for classification the task shape and the Conv-4-style backbone (channels, blocks). The
# image datasets default to MAML's 5-way 1-shot settings (Finn et al. 2017).
SETTINGS = {"sinusoid": dict(inner_lr=0.01, steps=1, iterations=600),
            "glyphs": dict(inner_lr=0.1, steps=2, iterations=150, ways=5, shots=1, queries=5, channels=32, blocks=3),
            "omniglot": dict(inner_lr=0.4, steps=1, iterations=60000, ways=5, shots=1, queries=15, channels=64,
                             blocks=4),
            "mini-imagenet": dict(inner_lr=0.01, steps=5, iterations=60000, ways=5, shots=1, queries=15, channels=32,
                                  blocks=4)}
IMAGE_TASKS = ("omniglot", "mini-imagenet")

# --preset: the main experiments of the seed papers, as flag defaults (explicit flags still win).
# `target` is what the paper reports, for the README; the backbone here is always Conv-4.
PRESETS = {
    # DropGrad (Tseng et al. 2020), Table 1, MAML on mini-ImageNet; the published code's defaults
    # (options.py, methods/maml.py): first-order MAML, 5 inner steps of 0.01, 4 tasks per update,
    # Adam 1e-3, 400 epochs of 100 tasks (10,000 meta-updates), Gaussian rate 0.1, 600 test tasks.
    # Its paper's backbone is ResNet-18; this preset uses Conv-4 (32 channels).
    "dropgrad-mini-imagenet-5w1s": dict(
        task="mini-imagenet", methods="none,dropgrad-gaussian", ways=5, shots=1, queries=15, steps=5, inner_lr=0.01,
        meta_lr=1e-3, meta_batch=4, iterations=10000, p=0.1, first_order=True, test_tasks=600,
        target="MAML 49.61 ± 0.92%, MAML + Gaussian DropGrad 52.35 ± 0.86% (ResNet-18)"),
    "dropgrad-mini-imagenet-5w5s": dict(
        task="mini-imagenet", methods="none,dropgrad-gaussian", ways=5, shots=5, queries=15, steps=5, inner_lr=0.01,
        meta_lr=1e-3, meta_batch=4, iterations=10000, p=0.1, first_order=True, test_tasks=600,
        target="MAML 65.72 ± 0.77%, MAML + Gaussian DropGrad 69.42 ± 0.73% (ResNet-18)"),
    # Meta-Dropout (Lee et al. 2020), Table 1 and its run files: second order, 5 inner steps,
    # 15 queries, Adam with gradient clipping to [-3, 3], 30 noise samples at meta-test, 1000 test tasks.
    "metadropout-omniglot-20w1s": dict(
        task="omniglot", methods="none,meta-dropout", ways=20, shots=1, queries=15, steps=5, inner_lr=0.1,
        meta_lr=1e-3, meta_batch=8, iterations=40000, grad_clip=3.0, mc_test_samples=30, test_tasks=1000,
        target="MAML 95.23 ± 0.17%, MAML + Meta-Dropout 96.63 ± 0.13%"),
    "metadropout-mini-imagenet-5w1s": dict(
        task="mini-imagenet", methods="none,meta-dropout", ways=5, shots=1, queries=15, steps=5, inner_lr=0.01,
        meta_lr=1e-4, meta_batch=4, iterations=60000, grad_clip=3.0, mc_test_samples=30, test_tasks=1000,
        target="MAML 49.58 ± 0.65%, MAML + Meta-Dropout 51.93 ± 0.67%"),
}


class MLP(nn.Module):
    """The MAML sinusoid network, 1-40-40-1; meta-dropout wraps both hidden layers."""

    def __init__(self, meta_dropout):
        super().__init__()
        wrap = dnn.MetaDropout if meta_dropout else (lambda m: m)
        self.hidden = nn.ModuleList([wrap(nn.Linear(1, 40)), wrap(nn.Linear(40, 40))])
        self.out = nn.Linear(40, 1)

    def forward(self, x, return_features=False):
        for layer in self.hidden:
            x = F.relu(layer(x))
        y = self.out(x)
        return (y, x) if return_features else y


class ConvNet(nn.Module):
    """The Conv-4 backbone of MAML's image experiments (`blocks` blocks of conv 3x3, [meta-dropout],
    batch norm on batch statistics, ReLU, 2x2 max-pool), then a linear head with logit noise under
    meta-dropout, as the published code's blocks. The glyphs use 3 blocks of 32 channels."""

    def __init__(self, ways, meta_dropout, *, in_channels, size, channels, blocks):
        super().__init__()
        wrap = dnn.MetaDropout if meta_dropout else (lambda m: m)
        self.convs = nn.ModuleList([wrap(nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1))
                                    for i in range(blocks)])
        self.norms = nn.ModuleList([nn.BatchNorm2d(channels, track_running_stats=False) for _ in range(blocks)])
        self.feature_shape = (channels, size >> blocks, size >> blocks)
        features = math.prod(self.feature_shape)
        self.head = nn.Linear(features, ways)
        self.logit_noise = dnn.LogitNoise(features) if meta_dropout else None

    def forward(self, x, return_features=False):
        for conv, norm in zip(self.convs, self.norms):
            x = F.max_pool2d(F.relu(norm(conv(x))), 2)
        h = x.flatten(1)
        y = self.head(h)
        if self.logit_noise is not None:
            y = self.logit_noise(h, y)
        return (y, x) if return_features else y


def build(task, method, settings):
    md = method == "meta-dropout"
    if task.name == "sinusoid":
        model = MLP(md)
    else:
        model = ConvNet(task.ways, md, in_channels=task.channels, size=task.size, channels=settings["channels"],
                        blocks=settings["blocks"])
    if method == "cml":
        shape = (40,) if task.name == "sinusoid" else model.feature_shape
        dnn.attach_co_learner(model, shape, 1 if task.name == "sinusoid" else task.ways)
    return model


def make_task(name, args, settings):
    if name == "sinusoid":
        return TASKS[name]()
    shape = dict(ways=settings["ways"], shots=settings["shots"], queries=settings["queries"])
    return TASKS[name](args.data_root, **shape) if name in IMAGE_TASKS else TASKS[name](**shape)


def task_settings(name, args):
    """SETTINGS[name] with the command line's overrides."""
    settings = dict(SETTINGS[name])
    for key in ("inner_lr", "steps", "iterations", "ways", "shots", "queries"):
        if getattr(args, key, None) is not None and (key in settings):
            settings[key] = getattr(args, key)
    return settings


def loss_of(task):
    return F.mse_loss if task.name == "sinusoid" else F.cross_entropy


def adapt(model, method, task, xs, ys, *, steps, lr, p, training, first_order, mc_samples=None):
    """The inner loop: `steps` fused DropGrad updates of the inner parameters on the support set."""
    loss_fn = loss_of(task)
    fast = dnn.inner_parameters(model)
    mode = DROPGRAD_MODE.get(method, "none")
    for _ in range(steps):
        def support_loss():
            return loss_fn(functional_call(model, fast, (xs,)), ys)

        loss = dnn.mc_loss(support_loss, training=training, samples=mc_samples) if method == "meta-dropout" \
            else support_loss()
        grads = func.grads_of(loss, fast, first_order=first_order)
        # Noise only while meta-training (training=False at meta-test), as the published DropGrad.
        fast = func.inner_step(fast, grads, lr, p, mode, first_order=first_order, training=training)
    return fast


def meta_loss(model, method, task, batch, args, settings):
    if args.vmap:
        return vmap_meta_loss(model, method, task, batch, args, settings)
    loss_fn, total = loss_of(task), 0.0
    for xs, ys, xq, yq in batch:
        fast = adapt(model, method, task, xs, ys, steps=settings["steps"], lr=settings["inner_lr"], p=args.p,
                     training=True, first_order=args.first_order)
        with dnn.query_pass(model):
            out, feats = functional_call(model, fast, (xq,), {"return_features": True})
        total = total + loss_fn(out, yq)
        if method == "cml":
            total = total + model.co_learner.loss(feats, yq, loss_fn)
    return total / len(batch)


def vmap_meta_loss(model, method, task, batch, args, settings):
    """meta_loss in the torch.func style: the tasks stacked and adapted under one vmap (each inner
    step one fused update over the whole meta-batch), torch.func.grad for the inner gradient."""
    loss_fn = loss_of(task)

    def support(p, x, y):
        return loss_fn(functional_call(model, p, (x,)), y)

    def query(p, x, y):
        with dnn.query_pass(model):
            return loss_fn(functional_call(model, p, (x,)), y)

    stacked = [torch.stack(ts) for ts in zip(*batch)]
    return func.meta_batch_loss(support, dict(dnn.inner_parameters(model)), *stacked, lr=settings["inner_lr"], p=args.p,
                                mode=DROPGRAD_MODE.get(method, "none"), steps=settings["steps"],
                                first_order=args.first_order, query_loss_fn=query)


def meta_test(model, method, task, args, settings, generator):
    """Mean and 95% CI half-width of the meta-test metric over args.test_tasks new tasks, with the
    per-task scores and, on the same tasks, those of a model that learned nothing (chance for
    classification; predicting 0, the untrained net's output scale, for regression)."""
    scores, trivial = [], []
    for _ in range(args.test_tasks):
        xs, ys, xq, yq = (t.to(args.device) for t in task.sample(generator, "test"))
        with torch.enable_grad():
            fast = adapt(model, method, task, xs, ys, steps=settings["steps"], lr=settings["inner_lr"], p=args.p,
                         training=False, first_order=True, mc_samples=args.mc_test_samples)
        with torch.no_grad(), dnn.query_pass(model):
            out = functional_call(model, {k: v.detach() for k, v in fast.items()}, (xq,))
        if task.name == "sinusoid":
            scores.append(F.mse_loss(out, yq).item())
            trivial.append(F.mse_loss(torch.zeros_like(yq), yq).item())
        else:
            scores.append((out.argmax(1) == yq).float().mean().item() * 100)
            trivial.append(100 / out.shape[1])
    s = torch.tensor(scores, dtype=torch.float64)
    return s.mean().item(), 1.96 * s.std().item() / math.sqrt(len(s)), scores, trivial


def all_reduce_grads(model, world):
    """Average the meta-gradient over the processes: one flat all-reduce."""
    params = list(model.parameters())
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= world
    for p, g in zip(params, flat.split([p.numel() for p in params])):
        p.grad = g.view_as(p)


def train(task_name, method, args, rank, world):
    settings = task_settings(task_name, args)
    iterations = settings["iterations"]
    task = make_task(task_name, args, settings)
    torch.manual_seed(args.seed)  # the same initial model on every process
    model = build(task, method, settings).to(args.device)
    opt = torch.optim.Adam(model.parameters(), lr=args.meta_lr)
    # Each process draws its own tasks and its own noise (seed=None reads torch's generator).
    torch.manual_seed(args.seed * 1000 + 1 + rank)
    tasks_gen = torch.Generator().manual_seed(args.seed * 1000 + 2 + rank)
    per_rank = args.meta_batch // world
    curve = []
    bar = _progress(iterations, f"{task_name:8s} {method:17s}", rank == 0 and not args.no_progress)
    start = time.perf_counter()
    for it in range(iterations):
        batch = [tuple(t.to(args.device) for t in task.sample(tasks_gen)) for _ in range(per_rank)]
        opt.zero_grad(set_to_none=True)
        loss = meta_loss(model, method, task, batch, args, settings)
        loss.backward()
        if world > 1:
            all_reduce_grads(model, world)
        if args.grad_clip is not None:  # Meta-Dropout's published code clips to [-3, 3]
            torch.nn.utils.clip_grad_value_(model.parameters(), args.grad_clip)
        opt.step()
        curve.append(loss.item())
        bar(it, loss.item())
    seconds = time.perf_counter() - start
    if method == "cml":
        dnn.drop_co_learner(model)  # the co-learner is for meta-training only
    # Every process holds the same model: the meta-test runs once, on rank 0.
    mean, ci, scores, trivial = meta_test(model, method, task, args, settings,
                                          torch.Generator().manual_seed(args.seed + 99)) \
        if rank == 0 else (float("nan"), float("nan"), [], [])
    checksum = sum(p.detach().double().sum().item() for p in model.parameters())
    return dict(task=task_name, method=method, metric=task.metric, mean=mean, ci95=ci, curve=curve,
                seconds=seconds, iterations=iterations, param_checksum=checksum, noise_seed=torch.initial_seed(),
                scores=scores, trivial_scores=trivial, higher_is_better=task.higher_is_better)


def _progress(total, label, show):
    try:
        from tqdm import tqdm
    except ImportError:  # an optional dependency (pip install dropgrad_cuda[examples])
        show = False
    if not show:
        return lambda it, loss: None
    bar = tqdm(total=total, desc=label, file=sys.stderr, leave=True, mininterval=0.5)

    def update(it, loss):
        bar.update(1)
        if it % 20 == 0 or it == total - 1:
            bar.set_postfix(loss=f"{loss:.3f}")
        if it == total - 1:
            bar.close()
    return update


def table(results):
    lines = ["| task | method | meta-test | 95% CI | meta-train time |", "|---|---|---|---|---|"]
    for r in results:
        unit = "%" if r["metric"] == "accuracy" else ""
        lines.append(f"| {r['task']} ({r['metric']}) | {r['method']} | {r['mean']:.3f}{unit} | ±{r['ci95']:.3f}{unit} "
                     f"| {r['seconds']:.1f} s |")
    return "\n".join(lines)


def plot(results, path):
    """The learning curves as a PNG; False without matplotlib (optional: dropgrad_cuda[examples])."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(dict.fromkeys(r["task"] for r in results))
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        for r in (r for r in results if r["task"] == name):
            c = torch.tensor(r["curve"])
            k = max(1, len(c) // 20)  # moving average over 5% of the run
            smooth = torch.nn.functional.avg_pool1d(c[None, None], k, 1).flatten() if len(c) >= k else c
            ax.plot(range(k, k + len(smooth)), smooth, label=r["method"])
        ax.set_title(f"{name}: meta-train outer loss, moving average (cml adds its co-learner loss)", fontsize=9)
        ax.set_xlabel("meta-iteration")
        ax.set_yscale("log")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _int_at_least(low):
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {v}")
        return v
    return parse


def _device(text):
    try:
        d = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"not a device: {text!r}") from None
    if d.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"dropgrad_cuda runs on cpu or cuda, got {text!r}")
    return text


def parse(argv=None):
    """The arguments, every one checked before any work (argparse's own errors, exit status 2)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS),
                    help="the hyperparameters of a seed paper's experiment (see the README); other flags override")
    ap.add_argument("--task", choices=("sinusoid", "glyphs", "both") + IMAGE_TASKS, default="both",
                    help="both = sinusoid and glyphs (generated); omniglot and mini-imagenet need --data-root")
    ap.add_argument("--data-root", default=None,
                    help=f"omniglot: {TASKS['omniglot'].LAYOUT};\nmini-imagenet: {TASKS['mini-imagenet'].LAYOUT}")
    ap.add_argument("--ways", type=_int_at_least(2), default=None, help="classes a task (default: per task)")
    ap.add_argument("--shots", type=_int_at_least(1), default=None, help="support examples a class")
    ap.add_argument("--queries", type=_int_at_least(1), default=None, help="query examples a class")
    ap.add_argument("--steps", type=_int_at_least(1), default=None, help="inner steps (default: per task)")
    ap.add_argument("--inner-lr", type=float, default=None, help="inner learning rate (default: per task)")
    ap.add_argument("--grad-clip", type=float, default=None, help="clip meta-gradients to [-v, v] (default: off)")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    ap.add_argument("--iterations", type=_int_at_least(1), default=None,
                    help="meta-iterations (default: per task, see SETTINGS)")
    ap.add_argument("--meta-batch", type=_int_at_least(1), default=4, help="tasks per meta-update, split over processes")
    ap.add_argument("--p", type=float, default=0.1, help="DropGrad rate (the published default)")
    ap.add_argument("--meta-lr", type=float, default=1e-3)
    ap.add_argument("--first-order", action=argparse.BooleanOptionalAction, default=False,
                    help="first-order MAML (default: second order)")
    ap.add_argument("--vmap", action="store_true",
                    help="adapt the meta-batch under torch.func.vmap (one fused update per inner step for all tasks);\n"
                         "with the glyph net's batch norm, PyTorch's batched batch-norm backward differs from\n"
                         "the loop's meta-gradient by ~0.5%% (functorch#534; the same with plain torch ops)")
    ap.add_argument("--test-tasks", type=_int_at_least(2), default=100, help="meta-test tasks (2 or more, for the CI)")
    ap.add_argument("--mc-test-samples", type=_int_at_least(1), default=30,
                    help="meta-dropout samples at meta-test (published: 30)")
    ap.add_argument("--device", type=_device, default="cpu", help="cpu or cuda (the CUDA kernels run on cuda)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/example", help="folder for results.json and learning_curves.png")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.preset:  # the preset's values as defaults, then the command line again on top
        ap.set_defaults(**{k: v for k, v in PRESETS[args.preset].items() if k != "target"})
        args = ap.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.vmap and "cml" in args.methods:
        ap.error("--vmap: cml reads the query features of each task; run it without --vmap")
    if not args.methods:
        ap.error(f"--methods: name at least one of {', '.join(METHODS)}")
    bad = [m for m in args.methods if m not in METHODS]
    if bad:
        ap.error(f"--methods: unknown {bad}; choose from {', '.join(METHODS)}")
    if not 0 <= args.p < 1:
        ap.error(f"--p must be in [0, 1), got {args.p}")
    if not (math.isfinite(args.meta_lr) and args.meta_lr > 0):
        ap.error(f"--meta-lr must be a positive number, got {args.meta_lr}")
    if args.inner_lr is not None and not (math.isfinite(args.inner_lr) and args.inner_lr > 0):
        ap.error(f"--inner-lr must be a positive number, got {args.inner_lr}")
    if args.grad_clip is not None and not (math.isfinite(args.grad_clip) and args.grad_clip > 0):
        ap.error(f"--grad-clip must be a positive number, got {args.grad_clip}")
    if args.task in IMAGE_TASKS:
        if args.data_root is None:
            ap.error(f"--task {args.task} needs --data-root DIR ({TASKS[args.task].LAYOUT})")
        try:  # the layout and the task shape, checked now rather than after training starts
            make_task(args.task, args, task_settings(args.task, args))
        except (OSError, ValueError, ImportError) as e:
            ap.error(f"--data-root {args.data_root!r}: {e}")
    elif args.data_root is not None:
        ap.error(f"--data-root is for --task omniglot or mini-imagenet, not {args.task}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA GPU is visible")
    try:  # fail now, not after training
        os.makedirs(args.out, exist_ok=True)
        with tempfile.TemporaryFile(dir=args.out):
            pass
    except OSError as e:
        ap.error(f"--out {args.out!r} is not a writable folder: {e.strerror or e}")
    return args


def main(argv=None):
    args = parse(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.meta_batch % world:
        raise SystemExit(f"--meta-batch {args.meta_batch} does not split over {world} processes")
    rank = 0
    if world > 1:
        dist.init_process_group("gloo")
        rank = dist.get_rank()
    tasks = ("sinusoid", "glyphs") if args.task == "both" else (args.task,)
    try:
        results = [train(t, m, args, rank, world) for t in tasks for m in args.methods]
    except UnreadableImage as e:  # a broken file in a class sampled mid-training: one line naming it
        raise SystemExit(f"few_shot: {e}") from None
    os.makedirs(args.out, exist_ok=True)
    if world > 1:  # what the two-process test checks: one model, different noise per process
        with open(os.path.join(args.out, f"rank{rank}.json"), "w") as fh:
            json.dump([{k: r[k] for k in ("task", "method", "param_checksum", "noise_seed")} for r in results], fh)
        dist.barrier()  # rank 0 may still be in its meta-test: tear the group down together
        dist.destroy_process_group()
    if rank == 0:
        with open(os.path.join(args.out, "results.json"), "w") as fh:
            json.dump(dict(args=vars(args), world_size=world, results=results), fh, indent=1)
        plotted = plot(results, os.path.join(args.out, "learning_curves.png"))
        print(table(results))
        print(f"wrote {args.out}/results.json" + (" and learning_curves.png" if plotted else
                                                  " (no plot: matplotlib is not installed)"))


if __name__ == "__main__":
    main()
