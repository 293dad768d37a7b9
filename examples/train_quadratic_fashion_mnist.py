"""Trains QuadraticLayer(784, 10, rank=25) on Fashion-MNIST with SGD, Adam and GLRAMSGD.

    .venv/bin/python examples/train_quadratic_fashion_mnist.py [--steps 400] [--out results/quadratic_fmnist]

The original quadratic-layer experiment (Gissin, "Over-Parameterization and Optimization III:
From Quadratic to Deep Polynomials"; MNIST, r=25, batch 128, lr=0.1). Each optimizer gets a small
learning-rate grid; every run sees the same batches. Train loss (running mean) and test
accuracy are recorded vs iterations and vs wall time, saved as JSON and as a PNG plot.
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
import quadnet  # noqa: E402

GRID = {"SGD": [1e-3, 1e-2, 1e-1], "Adam": [1e-4, 1e-3, 1e-2], "GLRAMSGD": [1e-4, 1e-3, 1e-2]}


def make_optimizer(name, model, lr):
    if name == "SGD":
        return torch.optim.SGD(model.parameters(), lr=lr)
    if name == "Adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    return quadnet.optim.GLRAMSGD(model, lr=lr, max_iter=10)


def evaluate(model, x, y):
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def train(name, lr, data, args):
    xtr, ytr, xte, yte = data
    torch.manual_seed(0)
    model = quadnet.nn.QuadraticLayer(784, 10, rank=25)
    opt = make_optimizer(name, model, lr)
    order = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(1))
    history = {"step": [], "seconds": [], "train_loss": [], "test_accuracy": []}
    running, elapsed = 0.0, 0.0
    for step in range(1, args.steps + 1):
        idx = order[(step - 1) * args.batch % len(xtr):][:args.batch]
        start = time.perf_counter()
        opt.zero_grad()
        loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
        loss.backward()
        try:
            opt.step()
        except RuntimeError as error:  # GLRAMSGD refuses a diverging step: stop this run
            print(f"\n  {name} lr={lr}: stopped at step {step}: {error}".splitlines()[1])
            break
        elapsed += time.perf_counter() - start
        running = loss.item() if step == 1 else 0.95 * running + 0.05 * loss.item()
        if step % args.eval_every == 0 or step == args.steps:
            acc = evaluate(model, xte, yte)
            for key, value in zip(history, (step, elapsed, running, acc)):
                history[key].append(value)
            bar = "#" * int(30 * step / args.steps)
            print(f"\r  {name:8s} lr={lr:<6g} [{bar:30s}] step {step}/{args.steps} "
                  f"loss {running:.3f} test acc {acc:.3f} ({elapsed:.0f}s)", end="", flush=True)
    print()
    return {"optimizer": name, "lr": lr, "history": history,
            "final_test_accuracy": history["test_accuracy"][-1] if history["test_accuracy"] else None,
            "seconds_per_step": elapsed / max(1, history["step"][-1] if history["step"] else 1)}


def plot(runs, best, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for run in runs:
        h = run["history"]
        style = "-" if best[run["optimizer"]] is run else ":"
        label = f"{run['optimizer']} lr={run['lr']:g}"
        axes[0, 0].plot(h["step"], h["train_loss"], style, label=label)
        axes[0, 1].plot(h["step"], h["test_accuracy"], style, label=label)
        axes[1, 0].plot(h["seconds"], h["train_loss"], style, label=label)
        axes[1, 1].plot(h["seconds"], h["test_accuracy"], style, label=label)
    for ax, (xl, yl) in zip(axes.flat, [("iteration", "train loss"), ("iteration", "test accuracy"),
                                        ("wall time (s)", "train loss"), ("wall time (s)", "test accuracy")]):
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
    axes[0, 0].set_yscale("log")
    axes[1, 0].set_yscale("log")
    axes[0, 1].legend(fontsize=8)
    fig.suptitle("QuadraticLayer(784, 10, rank=25) on Fashion-MNIST (solid: best lr per optimizer)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--out", default="results/quadratic_fmnist")
    args = parser.parse_args()
    data = (*fashion_mnist.load("train"), *fashion_mnist.load("test"))
    print(f"Fashion-MNIST: {len(data[0])} train / {len(data[2])} test; {args.steps} steps of {args.batch}")
    runs = [train(name, lr, data, args) for name, lrs in GRID.items() for lr in lrs]
    best = {}
    for run in runs:
        score = run["final_test_accuracy"] or 0.0
        if run["optimizer"] not in best or score > (best[run["optimizer"]]["final_test_accuracy"] or 0.0):
            best[run["optimizer"]] = run
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "runs.json"), "w") as f:
        json.dump({"steps": args.steps, "batch": args.batch, "runs": runs}, f, indent=1)
    plot(runs, best, os.path.join(args.out, "curves.png"))
    print("best per optimizer (test accuracy after the last step, seconds per step):")
    for name, run in best.items():
        print(f"  {name:8s} lr={run['lr']:<6g} acc {run['final_test_accuracy']:.4f}  {run['seconds_per_step'] * 1e3:.1f} ms/step")
    print(f"saved {args.out}/runs.json and {args.out}/curves.png")


if __name__ == "__main__":
    main()
