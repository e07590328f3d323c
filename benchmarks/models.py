"""Parameter lists and the second-order MAML meta-iteration the benchmarks use."""
import torch
import torch.nn.functional as F

import dropgrad_cuda as dg


def conv4_shapes(channels=32, ways=5, image=84):
    """The MAML Conv-4 backbone: 4 x (conv 3x3, batch norm, ReLU, 2x2 max-pool) and a linear head."""
    shapes, c_in, side = [], 3, image
    for _ in range(4):
        shapes += [(channels, c_in, 3, 3), (channels,), (channels,), (channels,)]
        c_in, side = channels, side // 2
    return shapes + [(ways, channels * side * side), (ways,)]


def resnet18_shapes(classes=1000):
    shapes = [(64, 3, 7, 7), (64,), (64,)]
    c_in = 64
    for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block in range(2):
            shapes += [(c_out, c_in, 3, 3), (c_out,), (c_out,), (c_out, c_out, 3, 3), (c_out,), (c_out,)]
            if block == 0 and (stride != 1 or c_in != c_out):
                shapes += [(c_out, c_in, 1, 1), (c_out,), (c_out,)]
            c_in = c_out
    return shapes + [(classes, 512), (classes,)]


def tensors(shapes, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g).to(device, dtype) * 0.1 for s in shapes]


def conv4_forward(params, x, query=False, *, phi=None, block=None):
    """The Conv-4 forward. With a meta-dropout `block(f, a, query)` and the generator's conv
    weights `phi` (4 x (weight, bias), outer loop only): the published meta-dropout block
    (dropgrad_cuda.nn.MetaDropout around each conv), f = conv_theta(x), a = conv_phi(x) on the
    same input, then block(f, a) before batch norm; query passes are deterministic."""
    for i in range(4):
        w, b, gamma, beta = params[4 * i: 4 * i + 4]
        f = F.conv2d(x, w, b, padding=1)
        x = f if block is None else block(f, F.conv2d(x, phi[2 * i], phi[2 * i + 1], padding=1), query)
        x = F.batch_norm(x, None, None, gamma, beta, training=True)  # transductive, as MAML
        x = F.max_pool2d(F.relu(x), 2)
    return F.linear(x.flatten(1), params[-2], params[-1])


def generator_shapes(channels=32):
    """Meta-dropout's noise generator for Conv-4: a conv of each block's shape (phi)."""
    return [s for i, c_in in enumerate((3, channels, channels, channels)) for s in ((channels, c_in, 3, 3), (channels,))]


# The meta-dropout block three ways: none (plain Conv-4, no generator), the published eager form,
# and the fused op.
def eager_meta_dropout_block(f, a, query):
    return f * F.softplus(a if query else a + torch.randn_like(a))


def fused_meta_dropout_block(f, a, query):
    return dg.meta_dropout(f, a, deterministic=query)


P, SIGMA = 0.1, (0.1 / 0.9) ** 0.5


def published_update(w, g, lr):
    """The published DropGrad code's update of one parameter: w - lr * (g * N(1, sigma))."""
    return w - lr * (g * torch.empty_like(g).normal_(1, SIGMA))


def published_dropgrad_step(params, grads, lr):
    """The published DropGrad code's inner update: Gaussian noise per parameter in a Python loop."""
    return [published_update(w, g, lr) for w, g in zip(params, grads)]


def plain_step(params, grads, lr):
    return [w - lr * g for w, g in zip(params, grads)]


def fused_step(params, grads, lr):
    return dg.dropgrad_step(params, grads, lr, P, "gaussian")


def meta_iteration(step, params, tasks, inner_steps=5, lr=0.01, forward=conv4_forward):
    """One second-order MAML meta-iteration over a list of (xs, ys, xq, yq) tasks; returns the
    meta-loss. forward(params, x, query) is the network (support passes query=False)."""
    meta_loss = 0.0
    for xs, ys, xq, yq in tasks:
        fast = params
        for _ in range(inner_steps):
            loss = F.cross_entropy(forward(fast, xs), ys)
            grads = torch.autograd.grad(loss, fast, create_graph=True)
            fast = step(fast, list(grads), lr)
        meta_loss = meta_loss + F.cross_entropy(forward(fast, xq, True), yq)
    (meta_loss / len(tasks)).backward()
    return meta_loss


def few_shot_tasks(n_tasks=4, ways=5, shots=5, queries=15, image=84, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_tasks):
        xs = torch.randn(ways * shots, 3, image, image, generator=g)
        xq = torch.randn(ways * queries, 3, image, image, generator=g)
        labels = [torch.arange(ways).repeat_interleave(k) for k in (shots, queries)]
        out.append(tuple(t.to(device) for t in (xs, labels[0], xq, labels[1])))
    return out
