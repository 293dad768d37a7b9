"""The original quadratic-layer experiment, reproduced: four ways to fit a 10-class classifier.

    .venv/bin/python examples/four_way_comparison.py [--steps 300] [--seeds 3] [--datasets fmnist digits] \
        [--out results/four_way]

Gissin ("Over-Parameterization and Optimization III: From Quadratic to Deep Polynomials") compares,
on MNIST with batch 128 and lr 0.1, the squared-activation model with 25 hidden units and with
25·26/2 = 325 (the same expressivity: quadnet.nn.to_diagonal maps every rank-25 symmetric model to
325 units), the symmetric-S model (QuadraticLayer, rank 25) trained with SGD, and the same model
trained with GLRAM projections — the last converging fastest. Here, on Fashion-MNIST and on
scikit-learn's digits (both offline):

- DiagonalQuadraticLayer rank 25 and rank 325, QuadraticLayer rank 25: SGD and Adam (the modern
  baseline), from the usual random init;
- QuadraticLayer rank 25 with GLRAMSGD, from W = S = 0 (the original code's init: a saddle where
  every gradient of W and S vanishes, so only a projected step can leave it) and from the random
  init; with its default tangent-space step and with projection="full" (the original algorithm:
  the batch's canonical step, then GLRAM), same seeds and batches.

Every configuration gets a learning-rate grid (SGD and GLRAMSGD include the original 0.1), picked
by validation accuracy (a split of the training set) averaged over the seeds; the test accuracy
of the picked lr is reported as mean ± standard deviation over the seeds, after the first
steps and at the end, with the training time per step. Saves results.json and curves.png
(test accuracy against iterations and against training time, mean ± std band).
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "python"))
import fashion_mnist  # noqa: E402

import quadnet  # noqa: E402

# name -> (model, optimizer, init)
CONFIGS = {
    "diagonal r=25, SGD": ("diagonal", 25, "SGD", "random"),
    "diagonal r=325, SGD": ("diagonal", 325, "SGD", "random"),
    "symmetric r=25, SGD": ("symmetric", 25, "SGD", "random"),
    "symmetric r=25, GLRAMSGD, W=0": ("symmetric", 25, "GLRAMSGD", "zero"),
    "symmetric r=25, GLRAMSGD": ("symmetric", 25, "GLRAMSGD", "random"),
    "symmetric r=25, GLRAMSGD full, W=0": ("symmetric", 25, "GLRAMSGD-full", "zero"),
    "symmetric r=25, GLRAMSGD full": ("symmetric", 25, "GLRAMSGD-full", "random"),
    "diagonal r=25, Adam": ("diagonal", 25, "Adam", "random"),
    "diagonal r=325, Adam": ("diagonal", 325, "Adam", "random"),
    "symmetric r=25, Adam": ("symmetric", 25, "Adam", "random"),
}
GRID = {"SGD": [0.01, 0.03, 0.1, 0.3, 1.0], "GLRAMSGD": [3e-4, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0],
        "Adam": [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1]}
GRID["GLRAMSGD-full"] = GRID["GLRAMSGD"]
EARLY_STEP = 50  # the "first steps" column


def load(name):
    """(x_train, y_train, x_val, y_val, x_test, y_test), pixels scaled to [0, 1]."""
    if name == "fmnist":
        x, y = fashion_mnist.load("train")
        xte, yte = fashion_mnist.load("test")
        return x[:-5000], y[:-5000], x[-5000:], y[-5000:], xte, yte
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    return x[:-600], y[:-600], x[-600:-300], y[-600:-300], x[-300:], y[-300:]


def make_model(kind, rank, init, d):
    layer = (quadnet.nn.QuadraticLayer if kind == "symmetric" else quadnet.nn.DiagonalQuadraticLayer)(d, 10, rank)
    if init == "zero":
        with torch.no_grad():
            for p in layer.parameters():
                p.zero_()
    return layer


def make_optimizer(name, model, lr):
    if name == "SGD":
        return torch.optim.SGD(model.parameters(), lr=lr)
    if name == "Adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    return quadnet.optim.GLRAMSGD(model, lr=lr, projection="full" if name == "GLRAMSGD-full" else "tangent")


def accuracy(model, x, y):
    with torch.no_grad():
        return float((torch.cat([model(c).argmax(1) for c in x.split(2500)]) == y).float().mean())


def run(config, lr, seed, data, args):
    kind, rank, opt_name, init = CONFIGS[config]
    xtr, ytr, xva, yva, xte, yte = data
    torch.manual_seed(seed)
    model = make_model(kind, rank, init, xtr.shape[1])
    opt = make_optimizer(opt_name, model, lr)
    batches = torch.Generator().manual_seed(1000 + seed)
    evals = sorted({10, 20, 30, EARLY_STEP, *range(args.eval_every, args.steps + 1, args.eval_every), args.steps})
    evals = [s for s in evals if s <= args.steps]
    history = {"step": [0], "seconds": [0.0], "val_accuracy": [accuracy(model, xva, yva)],
               "test_accuracy": [accuracy(model, xte, yte)]}
    elapsed, diverged = 0.0, None
    for step in range(1, args.steps + 1):
        idx = torch.randint(len(xtr), (args.batch,), generator=batches)
        start = time.perf_counter()
        opt.zero_grad()
        loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
        if not math.isfinite(loss.item()):
            diverged = f"loss {loss.item()} at step {step}"
            break
        loss.backward()
        try:
            opt.step()
        except RuntimeError as error:  # GLRAMSGD refuses a non-finite step (nothing written)
            diverged = f"step {step}: {str(error).splitlines()[0][:80]}"
            break
        elapsed += time.perf_counter() - start
        if step in evals:
            for key, value in zip(history, (step, elapsed, accuracy(model, xva, yva), accuracy(model, xte, yte))):
                history[key].append(value)
    if diverged:  # a diverged run counts as chance from then on
        for step in [s for s in evals if s > history["step"][-1]]:
            for key, value in zip(history, (step, elapsed, 0.1, 0.1)):
                history[key].append(value)
    return {"config": config, "lr": lr, "seed": seed, "history": history, "diverged": diverged,
            "seconds_per_step": elapsed / max(1, step)}


def summarize(runs):
    """Per config: the lr with the best mean final validation accuracy, and its test figures."""
    summary = {}
    for config in CONFIGS:
        by_lr = {}
        for r in runs:
            if r["config"] == config:
                by_lr.setdefault(r["lr"], []).append(r)
        if not by_lr:
            continue
        lr, chosen = max(by_lr.items(), key=lambda kv: statistics.mean(r["history"]["val_accuracy"][-1] for r in kv[1]))
        at = lambda r, step: r["history"]["test_accuracy"][r["history"]["step"].index(step)]  # noqa: E731
        early = [at(r, EARLY_STEP) for r in chosen]
        final = [r["history"]["test_accuracy"][-1] for r in chosen]
        summary[config] = {
            "lr": lr, "seeds": len(chosen),
            "test_accuracy_early": [statistics.mean(early), statistics.pstdev(early)],
            "test_accuracy_final": [statistics.mean(final), statistics.pstdev(final)],
            "ms_per_step": 1e3 * statistics.mean(r["seconds_per_step"] for r in chosen),
            "diverged_runs_in_grid": sum(1 for rs in by_lr.values() for r in rs if r["diverged"]),
        }
    return summary


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    datasets = list(results)
    fig, axes = plt.subplots(len(datasets), 2, figsize=(13, 4.8 * len(datasets)), squeeze=False)
    for row, dataset in zip(axes, datasets):
        runs, summary = results[dataset]["runs"], results[dataset]["summary"]
        for config, s in summary.items():
            chosen = [r for r in runs if r["config"] == config and r["lr"] == s["lr"]]
            steps = chosen[0]["history"]["step"]
            acc = torch.tensor([r["history"]["test_accuracy"] for r in chosen])
            secs = torch.tensor([r["history"]["seconds"] for r in chosen]).mean(0)
            mean, std = acc.mean(0), acc.std(0, unbiased=False)
            style = "-" if "GLRAMSGD" in config else ("--" if "Adam" in config else ":")
            label = f"{config} (lr {s['lr']:g})"
            for ax, x in ((row[0], torch.tensor(steps, dtype=torch.float64)), (row[1], secs)):
                x, m, sd = x[1:], mean[1:], std[1:]  # from the first evaluation (log time axis)
                line, = ax.plot(x, m, style, marker="o", ms=3, label=label)
                ax.fill_between(x, m - sd, m + sd, color=line.get_color(), alpha=0.15)
        for ax, xl in zip(row, ("iteration (batch 128)", "training time (s)")):
            ax.set_xlabel(xl)
            ax.set_ylabel("test accuracy")
            ax.set_title(f"{dataset}: mean ± std over {s['seeds']} seeds, best lr per configuration")
            ax.grid(alpha=0.3)
            ax.set_ylim(0.3, 1.0)
        row[1].set_xscale("log")
        row[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--datasets", nargs="*", default=["fmnist", "digits"], choices=["fmnist", "digits"])
    parser.add_argument("--only", nargs="*", choices=list(CONFIGS), help="run only these configurations")
    parser.add_argument("--out", default="results/four_way")
    args = parser.parse_args()
    start = time.time()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.steps} steps of {args.batch}, "
          f"{args.seeds} seeds")
    results = {}
    for dataset in args.datasets:
        data = load(dataset)
        print(f"\n{dataset}: {len(data[0])} train / {len(data[2])} validation / {len(data[4])} test, "
              f"{data[0].shape[1]} features")
        runs = []
        for config in args.only or CONFIGS:
            lrs = GRID[CONFIGS[config][2]]
            for i, lr in enumerate(lrs):
                for seed in range(args.seeds):
                    runs.append(run(config, lr, seed, data, args))
                done = [r for r in runs if r["config"] == config and r["lr"] == lr]
                val = statistics.mean(r["history"]["val_accuracy"][-1] for r in done)
                bar = "#" * (i + 1) + "." * (len(lrs) - i - 1)
                diverged = sum(1 for r in done if r["diverged"])
                flag = f"  ({diverged} diverged)" if diverged else ""
                print(f"\r  {config:32s} [{bar}] lr {lr:<6g} val acc {val:.3f}{flag}",
                      end="" if i < len(lrs) - 1 else "\n",
                      flush=True)
        results[dataset] = {"runs": runs, "summary": summarize(runs)}
        print(f"  {'configuration':32s} {'lr':>6s}  test acc @{EARLY_STEP:<4d}  test acc @{args.steps:<5d} ms/step")
        for config, s in results[dataset]["summary"].items():
            (e, es), (f, fs) = s["test_accuracy_early"], s["test_accuracy_final"]
            print(f"  {config:32s} {s['lr']:6g}  {e:.3f} ± {es:.3f}    {f:.3f} ± {fs:.3f}    {s['ms_per_step']:.1f}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"steps": args.steps, "batch": args.batch, "seeds": args.seeds, "grid": GRID,
                   "torch": torch.__version__, "threads": torch.get_num_threads(),
                   "results": results}, f, indent=1)
    plot(results, os.path.join(args.out, "curves.png"))
    print(f"saved {args.out}/results.json and {args.out}/curves.png ({time.time() - start:.0f}s)")


if __name__ == "__main__":
    main()
