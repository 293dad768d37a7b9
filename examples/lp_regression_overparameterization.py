"""Implicit acceleration by overparameterization: ℓ4 (and ℓ2) linear regression on real data.

    .venv/bin/python examples/lp_regression_overparameterization.py [--steps 3000] [--out results/lp_regression]

The UCI regression experiment of Arora, Cohen & Hazan 2018 ("On the Optimization of Deep
Networks: Implicit Acceleration by Overparameterization") on sklearn's diabetes data
(442 patients, 10 standardised features, standardised target): a linear model trained by
full-batch gradient descent on L_p = mean |x·w + b − y|^p, compared as

- depth 1 (plain GD), depth 2 and 3 (quadnet.nn.OverparamLinear, size-1 hidden layers, GD on
  the factors from a balanced init),
- quadnet.optim.EndToEndSGD with N = 2, 3 (the closed-form end-to-end rule, no extra parameters),
- AdaGrad and Adam on the linear model, and Adam on the depth-2 model.

Every method starts from the same end-to-end weight and gets the learning rate of a small grid
that first closes the optimisation gap to 1e-4 of its initial value for good (gap = loss − the best loss
any run reached; diverged runs excluded). Reported: steps after which the gap stays below 1e-2, 1e-4, 1e-6.
Loss vs iteration is saved as PNG and JSON for p = 4 and p = 2 (the source claims acceleration
for p > 2 only).
"""
import argparse
import functools
import json
import math
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "python"))
import quadnet  # noqa: E402

LRS = [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]


def load_diabetes():
    from sklearn.datasets import load_diabetes as load
    x, y = load(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float64)
    y = torch.tensor(y, dtype=torch.float64).unsqueeze(1)
    return (x - x.mean(0)) / x.std(0), (y - y.mean()) / y.std()


# name -> (depth of the model's factorisation, optimizer (params, lr=...))
METHODS = {
    "depth 1": (1, torch.optim.SGD),
    "depth 2": (2, torch.optim.SGD),
    "depth 3": (3, torch.optim.SGD),
    "EndToEndSGD N=2": (1, functools.partial(quadnet.optim.EndToEndSGD, depth=2)),
    "EndToEndSGD N=3": (1, functools.partial(quadnet.optim.EndToEndSGD, depth=3)),
    "AdaGrad": (1, torch.optim.Adagrad),
    "Adam": (1, torch.optim.Adam),
    "Adam, depth 2": (2, torch.optim.Adam),
}


def make(method, w0, lr):
    """(model, optimizer) for one method, starting from end-to-end weight w0 (1 × d), bias 0."""
    depth, optimizer = METHODS[method]
    d = w0.shape[1]
    if depth > 1:
        model = quadnet.nn.OverparamLinear(d, 1, depth, init=w0, dtype=torch.float64)
    else:
        model = torch.nn.Linear(d, 1).double()
        with torch.no_grad():
            model.weight.copy_(w0)
            model.bias.zero_()
    return model, optimizer(model.parameters(), lr=lr)


def run(method, lr, p, x, y, w0, steps):
    model, opt = make(method, w0, lr)
    losses = []
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        loss = (model(x) - y).abs().pow(p).mean()
        if not math.isfinite(loss.item()) or loss.item() > 1e6:
            return None, time.perf_counter() - start
        losses.append(loss.item())
        loss.backward()
        try:
            opt.step()
        except RuntimeError:  # EndToEndSGD refuses a diverging step
            return None, time.perf_counter() - start
    return losses, time.perf_counter() - start


def steps_to_gap(losses, floor, tol):
    """First step from which the loss stays within tol·(initial gap) of the floor, or None."""
    gap0 = losses[0] - floor
    step = None
    for i in range(len(losses) - 1, -1, -1):
        if losses[i] - floor > tol * gap0:
            break
        step = i
    return step


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(7 * len(results), 5))
    for ax, (p, runs) in zip(axes, results.items()):
        floor = min(min(r["losses"]) for r in runs.values())
        for method, r in runs.items():
            style = "--" if method.startswith("EndToEnd") else "-"
            ax.plot([v - floor + 1e-12 for v in r["losses"]], style, label=f"{method} (lr {r['lr']:g})")
        ax.set_yscale("log")
        ax.set_xlabel("iteration (full batch)")
        ax.set_ylabel(f"L{p} loss − best loss of any run")
        ax.set_title(f"ℓ{p} regression, diabetes (442 × 10)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--init-scale", type=float, default=0.1, help="std of the initial end-to-end weight")
    parser.add_argument("--out", default="results/lp_regression")
    args = parser.parse_args()
    x, y = load_diabetes()
    torch.manual_seed(0)
    w0 = torch.randn(1, x.shape[1], dtype=torch.float64) * args.init_scale
    results = {}
    for p in (4, 2):
        print(f"== ℓ{p} regression: {len(METHODS)} methods x {len(LRS)} learning rates, {args.steps} steps")
        runs = {}
        for method in METHODS:
            for lr in LRS:
                losses, seconds = run(method, lr, p, x, y, w0, args.steps)
                if losses is not None:
                    runs[method, lr] = {"lr": lr, "losses": losses, "seconds_per_step": seconds / args.steps}
            print(f"  {method:16s} done", flush=True)
        floor = min(min(r["losses"]) for r in runs.values())
        results[p] = {}
        print(f"  best loss {floor:.8f}; steps after which the gap (loss − best) stays below a fraction of its "
              "initial value:")
        print(f"  {'method':16s} {'lr':>6s} {'1e-2':>6s} {'1e-4':>6s} {'1e-6':>6s}  final gap   ms/step")
        for method in METHODS:
            candidates = [r for (m, _), r in runs.items() if m == method]
            for r in candidates:
                r["steps_to_gap"] = {f"{tol:g}": steps_to_gap(r["losses"], floor, tol) for tol in (1e-2, 1e-4, 1e-6)}
            best = min(candidates, key=lambda r: (r["steps_to_gap"]["0.0001"] or math.inf, r["losses"][-1]))
            results[p][method] = best
            g = [best["steps_to_gap"][k] for k in ("0.01", "0.0001", "1e-06")]
            print(f"  {method:16s} {best['lr']:6g} " + " ".join(f"{v if v is not None else '—':>6}" for v in g)
                  + f"  {best['losses'][-1] - floor:.1e}   {best['seconds_per_step'] * 1e3:.2f}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"steps": args.steps, "init_scale": args.init_scale, "learning_rates": LRS,
                   "results": {f"l{p}": runs for p, runs in results.items()}}, f)
    plot(results, os.path.join(args.out, "loss.png"))
    print(f"saved {args.out}/results.json and {args.out}/loss.png")


if __name__ == "__main__":
    main()
