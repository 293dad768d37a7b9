"""A deep polynomial convnet (no ReLU anywhere) against a ReLU CNN of the same size, on Fashion-MNIST.

    .venv/bin/python examples/polynomial_convnet_fashion_mnist.py [--epochs 10] [--search-epochs 2] \
        [--out results/polynomial_convnet_fmnist]

Models, both fed standardised 28×28 pixels:

- polynomial: PolynomialConvBlock(1→32, 3×3, rank 8, batch norm, 2×2 average pooling) →
  PolynomialConvBlock(32→64, 3×3, rank 16, same) → Linear(64·7·7 → 10). Each block is a quadratic
  convolution plus a 1×1 linear skip, so the logits are a polynomial of degree 4 in the pixels
  (batch norm and average pooling are affine maps at test time);
- ReLU CNN: Conv(1→32, 3×3) → BN → ReLU → max-pool → Conv(32→c, 3×3) → BN → ReLU → max-pool →
  Linear, with c chosen so that both have the same number of trainable parameters (printed).

Both get the same optimizer-settings search: Adam with a one-cycle schedule, the peak lr picked
from --lrs by accuracy on a 5,000-image validation split after --search-epochs epochs; then
--epochs epochs on the other 55,000 images, with test accuracy after every epoch (batch 128,
same batches for both). Saves results.json and curves.png (test accuracy against epochs and
against training time). The polynomial net (taking raw pixels in [0, 1]) is exported with
torch.export and AOTInductor (model.pt2) and, if the C++ example app is built, classified by
it, with its predictions compared with Python's.
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "python"))
import fashion_mnist  # noqa: E402
from fashion_mnist import Pixels  # noqa: E402
from train_deep_polynomial_fashion_mnist import check_in_cpp, export_aoti  # noqa: E402

import quadnet  # noqa: E402

TARGET_ACCURACY = 0.915


def polynomial_net():
    return torch.nn.Sequential(
        quadnet.nn.PolynomialConvBlock(1, 32, 3, rank=8, padding=1, norm=True, pool=2),
        quadnet.nn.PolynomialConvBlock(32, 64, 3, rank=16, padding=1, norm=True, pool=2),
        torch.nn.Flatten(), torch.nn.Linear(64 * 7 * 7, 10))


def relu_net(channels):
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, channels, 3, padding=1), torch.nn.BatchNorm2d(channels), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(channels * 7 * 7, 10))


def trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def matching_relu_channels(target):
    """The second conv width whose ReLU CNN has the parameter count nearest to ``target``."""
    return min(range(8, 257), key=lambda c: abs(trainable(relu_net(c)) - target))


def accuracy(model, x, y):
    model.eval()
    with torch.no_grad():
        predictions = torch.cat([model(chunk).argmax(1) for chunk in x.split(1000)])
    model.train()
    return float((predictions == y).float().mean()), predictions


def train(make, lr, epochs, data, batch, label, eval_set):
    """Adam + one-cycle; returns (model, history of (epoch, seconds, loss, accuracy on eval_set))."""
    xtr, ytr = data
    torch.manual_seed(0)
    model = make()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = len(xtr) // batch
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)
    order = torch.Generator().manual_seed(1)
    history = {"epoch": [], "seconds": [], "train_loss": [], "accuracy": []}
    elapsed = 0.0
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(len(xtr), generator=order)
        total = 0.0
        for i in range(steps):
            idx = perm[i * batch:(i + 1) * batch]
            start = time.perf_counter()
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
            elapsed += time.perf_counter() - start
            total += loss.item()
            if i % 25 == 0 or i == steps - 1:
                done = int(30 * (i + 1) / steps)
                print(f"\r  {label} epoch {epoch}/{epochs} [{'#' * done:30s}] loss {total / (i + 1):.3f} "
                      f"({elapsed:.0f}s)", end="", flush=True)
        acc = accuracy(model, *eval_set)[0]
        for key, value in zip(history, (epoch, elapsed, total / steps, acc)):
            history[key].append(value)
        print(f"  acc {acc:.4f}")
    return model, history


def plot(runs, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, run in runs.items():
        h = run["history"]
        label = f"{name} ({run['parameters']} params, lr {run['lr']:g})"
        axes[0].plot(h["epoch"], h["accuracy"], "o-", label=label)
        axes[1].plot(h["seconds"], h["accuracy"], "o-", label=label)
    for ax, xlabel in zip(axes, ["epoch", "training wall time (s)"]):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy")
        ax.axhline(TARGET_ACCURACY, color="gray", ls=":", lw=1)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("Fashion-MNIST: polynomial convnet (degree 4, no ReLU) vs ReLU CNN of the same size")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--search-epochs", type=int, default=2)
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--train-size", type=int, default=55000, help="training images (the first N of the split)")
    parser.add_argument("--no-export", action="store_true", help="skip the AOTInductor export and the C++ check")
    parser.add_argument("--out", default="results/polynomial_convnet_fmnist")
    args = parser.parse_args()
    start = time.time()
    x, y = fashion_mnist.load("train")
    xte, yte = fashion_mnist.load("test")
    xtr, ytr, xval, yval = x[:-5000][:args.train_size], y[:-5000][:args.train_size], x[-5000:], y[-5000:]
    pixels = Pixels(float(xtr.mean()), float(xtr.std()))
    torch.manual_seed(0)
    poly_params = trainable(polynomial_net())
    channels = matching_relu_channels(poly_params)
    makers = {"polynomial": lambda: torch.nn.Sequential(pixels, polynomial_net()),
              "ReLU CNN": lambda: torch.nn.Sequential(pixels, relu_net(channels))}
    print(f"Fashion-MNIST: {len(xtr)} train / {len(xval)} validation / {len(xte)} test; torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s); polynomial net {poly_params} parameters, ReLU CNN "
          f"(second conv {channels} channels) {trainable(relu_net(channels))}")
    runs, models = {}, {}
    for name, make in makers.items():
        search = {}
        for lr in args.lrs:
            _, h = train(make, lr, args.search_epochs, (xtr, ytr), args.batch, f"{name} lr {lr:g} (search)",
                         (xval, yval))
            search[lr] = h["accuracy"][-1]
        lr = max(search, key=search.get)
        print(f"{name}: validation accuracy after {args.search_epochs} epochs "
              + ", ".join(f"lr {k:g} {v:.4f}" for k, v in search.items()) + f" -> lr {lr:g}")
        model, h = train(make, lr, args.epochs, (xtr, ytr), args.batch, name, (xte, yte))
        reached = [t for t, a in zip(h["seconds"], h["accuracy"]) if a >= TARGET_ACCURACY]
        runs[name] = {"lr": lr, "search_validation_accuracy": {str(k): v for k, v in search.items()},
                      "parameters": trainable(model), "history": h, "final_test_accuracy": h["accuracy"][-1],
                      "train_seconds": h["seconds"][-1], "seconds_per_step": h["seconds"][-1] / (
                          args.epochs * (len(xtr) // args.batch)),
                      "seconds_to_target": reached[0] if reached else None}
        models[name] = model
    os.makedirs(args.out, exist_ok=True)
    cpp = None
    poly = models["polynomial"].eval()
    if not args.no_export:
        model_path = export_aoti(poly, xte[:256], args.out)
        cpp = check_in_cpp(model_path, accuracy(poly, xte, yte)[1], args.out)
    plot(runs, os.path.join(args.out, "curves.png"))
    p, r = runs["polynomial"], runs["ReLU CNN"]
    gap = p["final_test_accuracy"] - r["final_test_accuracy"]
    verdict = (f"polynomial convnet {p['final_test_accuracy']:.4f} vs ReLU CNN {r['final_test_accuracy']:.4f} "
               f"({gap:+.4f}) after {args.epochs} epochs; goal {TARGET_ACCURACY} in under 600 s of training: "
               + ("met" if p["final_test_accuracy"] >= TARGET_ACCURACY and p["train_seconds"] < 600 else "not met")
               + f" ({p['train_seconds']:.0f} s); per step {p['seconds_per_step'] * 1e3:.0f} ms vs "
               f"{r['seconds_per_step'] * 1e3:.0f} ms")
    summary = {"epochs": args.epochs, "search_epochs": args.search_epochs, "lrs": args.lrs, "batch": args.batch,
               "train_size": len(xtr), "runs": runs, "cpp_check": cpp, "verdict": verdict,
               "total_seconds": time.time() - start}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print("\nresults (test accuracy after the last epoch):")
    for name, run in runs.items():
        to_target = (f"{TARGET_ACCURACY} after {run['seconds_to_target']:.0f}s" if run["seconds_to_target"] is not None
                     else f"never {TARGET_ACCURACY}")
        print(f"  {name:11s} {run['parameters']} params  lr {run['lr']:g}  acc {run['final_test_accuracy']:.4f}  "
              f"{run['train_seconds']:.0f}s ({run['seconds_per_step'] * 1e3:.0f} ms/step; {to_target})")
    print(f"verdict: {verdict}")
    print(f"saved {args.out}/results.json and {args.out}/curves.png; total {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
