"""Depth: do 2- and 4-block DeepPolynomialNets train with SGD and Adam at their usual settings?

    .venv/bin/python examples/deep_polynomial_depth.py [--steps 1000] [--seeds 8] \
        [--fmnist-epochs 6] [--fmnist-seeds 2] [--out results/deep_polynomial_depth]

What a new user tries first: standardised pixels, batch 64, SGD (lr 0.01, momentum 0.9) and Adam
(lr 1e-3), no schedule, no clipping. For each normalisation of the blocks — none, ``norm=True``
(the output of every block but the last), ``quadratic_norm=True`` (the quadratic term of every
block; the library's default), that without ``zero_init_residual`` (on by default: the 4-block
nets' middle blocks start as the identity) and both norms — it trains 2-block and 4-block
(degree 16) nets on scikit-learn's digits (``[64, 32, …, 10]``, ranks 8, ``--seeds`` seeds,
``--steps`` steps; a seeded 70/30 split) and on Fashion-MNIST (``[784, 128, …, 10]``, ranks 16,
``--fmnist-seeds`` seeds, ``--fmnist-epochs`` epochs; 0 skips it), and reports the test
accuracy, or the step at which the loss turned NaN/Inf (with more than 2 seeds: the mean ± the
standard deviation over seeds, or how many runs turned NaN). Saves results.json and accuracy.png;
the verdict says which settings trained (no NaN, accuracy > 0.5) in every run and, for those, 4
blocks' mean accuracy minus 2 blocks' with its standard error (over seeds).
"""
import argparse
import json
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

NORMS = {"none": {"norm": False, "quadratic_norm": False}, "norm": {"norm": True, "quadratic_norm": False},
         "quadratic_norm (default)": {"norm": False, "quadratic_norm": True},
         "quadratic_norm, no zero init": {"norm": False, "quadratic_norm": True, "zero_init_residual": False},
         "both": {"norm": True, "quadratic_norm": True}}
OPTIMIZERS = {"SGD": lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9),
              "Adam": lambda p: torch.optim.Adam(p, lr=1e-3)}
BATCH = 64
LEARNED = 0.5  # a run below this test accuracy (chance: 0.1) did not learn


def digits():
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    train, test = torch.randperm(len(x), generator=torch.Generator().manual_seed(0)).split([1257, 540])
    return x[train], y[train], x[test], y[test]


def fmnist():
    x, y = fashion_mnist.load("train")
    x_test, y_test = fashion_mnist.load("test")
    return x, y, x_test, y_test


def standardise(x, x_test):
    mean, std = x.mean(0), x.std(0) + 1e-3
    return (x - mean) / std, (x_test - mean) / std


def train(data, width, rank, blocks, norm, optimizer, seed, steps):
    """Test accuracy after `steps` steps, or None and the step whose loss was not finite."""
    x, y, x_test, y_test = data
    torch.manual_seed(seed)
    net = quadnet.nn.DeepPolynomialNet([x.shape[1]] + [width] * (blocks - 1) + [10], ranks=rank, **NORMS[norm])
    opt = OPTIMIZERS[optimizer](net.parameters())
    generator = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(len(x), generator=generator)
                       for _ in range(steps * BATCH // len(x) + 1)])
    for step in range(steps):
        batch = order[BATCH * step:BATCH * (step + 1)]
        loss = F.cross_entropy(net(x[batch]), y[batch])
        if not torch.isfinite(loss):
            return None, step
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (net.eval()(x_test).argmax(1) == y_test).float().mean().item(), None


def cell(runs):
    """Each run's accuracy (or NaN@step) for up to 2 runs; else mean ± std, or how many turned NaN."""
    if len(runs) <= 2:
        return " / ".join(f"NaN@{r['nan_at_step']}" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
                          for r in runs)
    nans = sum(r["accuracy"] is None for r in runs)
    if nans:
        return f"NaN in {nans} of {len(runs)}"
    accuracies = [r["accuracy"] for r in runs]
    return f"{statistics.mean(accuracies):.3f} ± {statistics.stdev(accuracies):.3f}"


def depth_gain(two, four):
    """4 blocks' mean accuracy minus 2 blocks', and the standard error of that difference (None with
    one seed)."""
    a, b = ([r["accuracy"] for r in runs] for runs in (two, four))
    spread = (statistics.variance(a) / len(a) + statistics.variance(b) / len(b)) ** 0.5 if len(a) > 1 else None
    return statistics.mean(b) - statistics.mean(a), spread


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="digits: training steps")
    parser.add_argument("--seeds", type=int, default=8, help="digits: seeds")
    parser.add_argument("--fmnist-epochs", type=float, default=6, help="Fashion-MNIST epochs (0: skip)")
    parser.add_argument("--fmnist-seeds", type=int, default=2, help="Fashion-MNIST: seeds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="results/deep_polynomial_depth")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    x, y, x_test, y_test = digits()
    x, x_test = standardise(x, x_test)
    datasets = {"digits": ((x, y, x_test, y_test), 32, 8, range(args.seeds), args.steps)}
    if args.fmnist_epochs > 0:
        x, y, x_test, y_test = fmnist()
        x, x_test = standardise(x, x_test)
        datasets["Fashion-MNIST"] = ((x, y, x_test, y_test), 128, 16, range(args.fmnist_seeds),
                                     int(args.fmnist_epochs * len(x) / BATCH))
    results, started = {}, time.time()
    for name, (data, width, rank, seeds, steps) in datasets.items():
        results[name] = {"steps": steps, "seeds": len(seeds), "width": width, "rank": rank, "runs": {}}
        print(f"== {name}: {steps} steps of batch {BATCH}, {len(seeds)} seed(s); test accuracy, or NaN@step",
              flush=True)
        print(f"{'norm':26s}" + "".join(f"{f'{opt} {blocks} blocks':>22s}" for opt in OPTIMIZERS for blocks in (2, 4)))
        for norm in NORMS:
            row = {}
            for opt in OPTIMIZERS:
                for blocks in (2, 4):
                    runs = []
                    for seed in seeds:
                        accuracy, nan_at = train(data, width, rank, blocks, norm, opt, seed, steps)
                        runs.append({"seed": seed, "accuracy": accuracy, "nan_at_step": nan_at})
                    row[f"{opt} {blocks}"] = runs
            results[name]["runs"][norm] = row
            print(f"{norm:26s}" + "".join(f"{cell(runs):>22s}" for runs in row.values()), flush=True)
    verdict = []
    for norm in NORMS:
        failed = [f"{name} {key} blocks" for name, d in results.items() for key, runs in d["runs"][norm].items()
                  if any(r["accuracy"] is None or r["accuracy"] < LEARNED for r in runs)]
        if failed:
            verdict.append(f"{norm}: NaN/Inf or accuracy < {LEARNED} in " + ", ".join(failed))
            continue
        deeper = []
        for name, d in results.items():
            for opt in OPTIMIZERS:
                gain, spread = depth_gain(*(d["runs"][norm][f"{opt} {b}"] for b in (2, 4)))
                deeper.append(f"{name} {opt} {gain:+.3f}" + ("" if spread is None else f" ± {spread:.3f}"))
        verdict.append(f"{norm}: trained in every run; 4 blocks minus 2 blocks (mean accuracy ± standard error): "
                       + ", ".join(deeper))
    print("\nVerdict:\n  " + "\n  ".join(verdict))
    print(f"total {time.time() - started:.0f} s")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"results": results, "verdict": verdict, "batch": BATCH,
                   "optimizers": {"SGD": "lr 0.01, momentum 0.9", "Adam": "lr 1e-3"}}, f, indent=1)
    plot(results, os.path.join(args.out, "accuracy.png"))


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 4), squeeze=False)
    for ax, (name, d) in zip(axes[0], results.items()):
        keys = [f"{opt} {b}" for opt in OPTIMIZERS for b in (2, 4)]
        width = 0.8 / len(NORMS)
        for k, norm in enumerate(NORMS):
            means = [sum(r["accuracy"] or 0.0 for r in d["runs"][norm][key]) / len(d["runs"][norm][key])
                     for key in keys]
            ax.bar([i + width * k for i in range(len(keys))], means, width=width, label=norm)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(keys))], [k + " blocks" for k in keys])
        ax.set_ylim(0, 1)
        ax.set_title(f"{name}: test accuracy (0: NaN)")
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
