"""What a GLRAM projection step would cost for a convolutional quadratic layer, and whether it helps.

    .venv/bin/python benchmarks/bench_conv_projection.py [--steps 300] [--json results/bench_conv_projection.json]

GLRAMSGD refuses QuadraticConv2d (docs/quadratic_conv.rst, "Projection"). A convolution's batch
has one sample per output pixel, k = N·H'·W' of them, so the projected step of the dense layer
(quadnet.linalg.projected_step with X = the unfolded patches, G = the output gradient per pixel)
takes its dense route (k ≥ d): the n canonical matrices A_i − lr·Σ_p G[p, i] u_p u_p^T in the
patch space (d = C·kh·kw), then GLRAM on them. This script measures, with that library function:

1. cost: one projected step against the layer's forward+backward, at the first layer of the
   Fashion-MNIST polynomial convnet (C = 1, d = 9) and at a middle layer (C = 32, d = 288), each
   on its whole batch;
2. accuracy per step, where the step is affordable (C = 1): a one-layer model
   QuadraticConv2d(1, 32, 3, rank 8) → BatchNorm2d → 2×2 average pooling → Linear on
   Fashion-MNIST, the quadratic convolution trained by projected SGD (the rest by SGD with
   momentum) against SGD with momentum and Adam for everything, each with a small lr grid
   (picked by validation accuracy), test accuracy after 50 steps and at the end.
"""
import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "python"))
sys.path.insert(0, os.path.join(HERE, "..", "examples"))
from common import median_time, save_rows  # noqa: E402

import quadnet  # noqa: E402

# (label, batch, in_channels, size, out_channels, rank), each projection timed on its whole batch:
# a slice small enough for B² ≤ n·d² would take projected_step's factored route instead.
COST_SHAPES = [("first layer", 128, 1, 28, 32, 8), ("middle layer", 32, 32, 28, 64, 16)]


def conv_projected_step(layer, x, G, lr, max_iter=3):
    """projected_step on the unfolded patches: the dense route (n canonical d×d matrices)."""
    kh, kw = layer.kernel_size
    patches = F.unfold(x, (kh, kw), dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
    U = patches.transpose(1, 2).reshape(-1, patches.shape[1])
    G2 = G.permute(0, 2, 3, 1).reshape(-1, layer.out_channels)
    return quadnet.linalg.projected_step(layer.weight.flatten(1), layer.S, U, G2, lr, max_iter=max_iter)


def measure_cost():
    rows = []
    print(f"{'layer':>14} {'N,C,HxW->n, r':>22} {'d':>5} {'fwd+bwd ms':>11} {'projected step ms':>18} {'ratio':>7}")
    for label, N, C, size, n, r in COST_SHAPES:
        torch.manual_seed(0)
        layer = quadnet.nn.QuadraticConv2d(C, n, 3, rank=r, padding=1)
        x = torch.randn(N, C, size, size)
        G = torch.randn(N, n, size, size) * 1e-3

        def backprop():
            layer.zero_grad()
            layer(x).backward(G)
        fwd_bwd = median_time(backprop)
        with torch.no_grad():
            step = median_time(conv_projected_step, layer, x, G, 0.01, repeats=3, budget=60.0)
        d = C * 9
        row = {"layer": label, "shape": [N, C, size, size, n, r], "d": d, "pixels": N * size * size,
               "fwd_bwd_seconds": fwd_bwd, "projected_step_seconds": step,
               "canonical_MB_float64": n * d * d * 8 / 2 ** 20,
               "canonical_gradient_GFLOP": 2 * n * N * size * size * d * d / 1e9}
        rows.append(row)
        print(f"{label:>14} {f'{N},{C},{size}x{size}->{n}, {r}':>22} {d:>5} {fwd_bwd * 1e3:11.1f} "
              f"{step * 1e3:18.0f} {step / fwd_bwd:6.0f}x", flush=True)
    return rows


def one_layer_model(pixels):
    return torch.nn.Sequential(pixels, quadnet.nn.QuadraticConv2d(1, 32, 3, rank=8, padding=1),
                               torch.nn.BatchNorm2d(32, affine=False), torch.nn.AvgPool2d(2), torch.nn.Flatten(),
                               torch.nn.Linear(32 * 14 * 14, 10))


def accuracy(model, x, y):
    model.eval()
    with torch.no_grad():
        acc = float((torch.cat([model(c).argmax(1) for c in x.split(2000)]) == y).float().mean())
    model.train()
    return acc


def train(method, lr, data, steps, batch=128, early=50):
    """(validation accuracy, test accuracy after `early` steps and at the end, seconds per step)."""
    xtr, ytr, xval, yval, xte, yte, pixels = data
    torch.manual_seed(0)
    model = one_layer_model(pixels)
    conv = model[1]
    rest = [p for name, p in model.named_parameters() if not name.startswith("1.") or name == "1.bias"]
    if method == "projected":
        opt = torch.optim.SGD(rest, lr=lr, momentum=0.9)
    elif method == "SGD":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(1)
    early_acc, elapsed = None, 0.0
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(xtr), (batch,), generator=order)
        start = time.perf_counter()
        opt.zero_grad()
        conv.zero_grad()
        x = pixels(xtr[idx])
        out = conv(x)
        out.retain_grad()
        logits = model[2:](out)
        F.cross_entropy(logits, ytr[idx]).backward()
        opt.step()
        if method == "projected":
            with torch.no_grad():
                result = conv_projected_step(conv, x, out.grad, lr)
                conv.weight.copy_(result.weight.view_as(conv.weight))
                conv.S.copy_(result.S)
        elapsed += time.perf_counter() - start
        if step == early:
            early_acc = accuracy(model, xte, yte)
    return accuracy(model, xval, yval), early_acc, accuracy(model, xte, yte), elapsed / steps


def measure_accuracy(steps):
    import fashion_mnist
    x, y = fashion_mnist.load("train")
    xte, yte = fashion_mnist.load("test")
    xtr, ytr, xval, yval = x[:-5000], y[:-5000], x[-5000:], y[-5000:]
    data = (xtr, ytr, xval, yval, xte, yte, fashion_mnist.Pixels(float(xtr.mean()), float(xtr.std())))
    grids = {"projected": [0.01, 0.1], "SGD": [0.01, 0.1], "Adam": [1e-3, 3e-3]}
    rows = []
    for method, grid in grids.items():
        runs = {lr: train(method, lr, data, steps) for lr in grid}
        lr = max(runs, key=lambda k: runs[k][0])
        val, early, final, per_step = runs[lr]
        rows.append({"method": method, "lr": lr, "validation": val, "test_at_50": early, "test_final": final,
                     "seconds_per_step": per_step, "grid": {str(k): v[0] for k, v in runs.items()}})
        print(f"{method:>10} lr {lr:<6g} test acc after 50 steps {early:.4f}, after {steps} {final:.4f} "
              f"({per_step * 1e3:.0f} ms/step)", flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--json", default="results/bench_conv_projection.json")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, CPU, {torch.get_num_threads()} threads; projected step = "
          "quadnet.linalg.projected_step on the unfolded patches (dense route), 3 GLRAM iterations")
    cost = measure_cost()
    accuracy_rows = [] if args.skip_accuracy else measure_accuracy(args.steps)
    save_rows(args.json, cost, accuracy=accuracy_rows, steps=args.steps)


if __name__ == "__main__":
    main()
