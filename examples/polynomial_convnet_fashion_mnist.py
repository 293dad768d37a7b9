"""A deep polynomial convnet (no ReLU anywhere) against a ReLU CNN of the same size, on Fashion-MNIST.

    .venv/bin/python examples/polynomial_convnet_fashion_mnist.py [--epochs 10] [--search-epochs 2] \
        [--out results/polynomial_convnet_fmnist]

Models, both fed standardised 28×28 pixels:

- polynomial: PolynomialConvBlock(1→32, 3×3, rank 8, rank norm, batch norm, 2×2 average pooling)
  → PolynomialConvBlock(32→24, 3×3, rank 16, same) → PolynomialBlock(24·7·7 → 10, rank 22), the
  quadratic head. Each conv block is a quadratic convolution (its rank filter outputs
  batch-normalised before the forms: rank_norm) plus a 1×1 linear skip; the head is a dense
  quadratic layer (its quadratic term batch-normalised) plus a linear skip. So the logits are a
  polynomial of degree 8 in the pixels (batch norms and average pooling are affine maps at test
  time);
- ReLU CNN: Conv(1→32, 3×3) → BN → ReLU → max-pool → Conv(32→c, 3×3) → BN → ReLU → max-pool →
  Linear, with c chosen so that both have the same number of trainable parameters (printed).

Both get the same optimizer-settings search: Adam with a one-cycle schedule, the peak lr picked
from --lrs by accuracy on a 5,000-image validation split after --search-epochs epochs; then
--epochs epochs on the other 55,000 images, with test accuracy after every epoch (batch 128,
same batches for both). ``--optimizers adam glramsgd sgd`` also trains the polynomial net with
quadnet's GLRAMSGD (tangent step, momentum 0.9; its quadratic convolutions projected in their
patch space, the head's quadratic layer in its input space) and with SGD of the same momentum,
each with its own lr search (--glramsgd-lrs, --sgd-lrs) and the same one-cycle schedule;
``--models polynomial`` skips the ReLU CNN; GLRAMSGD needs ``--no-rank-norm`` (it refuses
rank-normed blocks, which have no canonical space); ``--linear-head`` trains the earlier net
(64 channels into a linear head) instead. A single lr given for an optimizer is used
without a search. Training recipe, the same for every run:
``--shift k`` translates each training image by up to k pixels (random-shift augmentation),
``--label-smoothing`` smooths the cross-entropy, ``--weight-decay`` decays the weights (decoupled,
AdamW, for Adam; an L2 term for SGD and GLRAMSGD). ``--seeds N`` repeats each final run with N seeds
(init, batch order, shifts; the lr searched with seed 0) and reports mean ± standard deviation;
``--ablation`` first trains each model with each recipe of ABLATION (plain, random shift, label
smoothing, both, weight decay; Adam at --ablation-lr, seed 0), and the polynomial net without its rank norms
and with the linear head of the earlier net (ARCHITECTURE_ABLATION, plain recipe), and prints
the table of their effects. The goal
the verdict checks: the polynomial net at least TARGET_ACCURACY and at least the ReLU CNN's
accuracy, in under 600 s of training.

Saves results.json (every run, the seeds, the ablation) and curves.png (test accuracy against
epochs and against training time). The polynomial net of the first optimizer (taking raw pixels
in [0, 1]) is exported with torch.export and AOTInductor (model.pt2) and, if the C++ example app
is built, classified by it, with its predictions compared with Python's.
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
from fashion_mnist import Pixels  # noqa: E402
from train_deep_polynomial_fashion_mnist import check_in_cpp, export_aoti  # noqa: E402

import quadnet  # noqa: E402

TARGET_ACCURACY = 0.925  # the goal: at least this, and at least the ReLU CNN's accuracy, in under 600 s

# --ablation: each training ingredient alone and together, on each model, at one lr (1 seed)
ABLATION = {"plain": {"shift": 0, "label_smoothing": 0.0},
            "random shift (2 px)": {"shift": 2, "label_smoothing": 0.0},
            "label smoothing 0.1": {"shift": 0, "label_smoothing": 0.1},
            "shift + smoothing": {"shift": 2, "label_smoothing": 0.1},
            "weight decay 0.1": {"shift": 0, "label_smoothing": 0.0, "weight_decay": 0.1}}
# --ablation: the polynomial net's architecture ingredients, each left out (plain recipe, same lr)
ARCHITECTURE_ABLATION = {"without rank_norm": {"rank_norm": False},
                         "with a linear head (64 channels)": {"quadratic_head": False}}
# The quadratic head's input channels and rank; the linear head's channels, about the same size
# (the net before the quadratic head). Picked in 4-epoch screens (README, the ablation).
HEAD_CHANNELS, HEAD_RANK, LINEAR_HEAD_CHANNELS = 24, 22, 64


def polynomial_net(rank_norm=True, quadratic_head=True):
    channels = HEAD_CHANNELS if quadratic_head else LINEAR_HEAD_CHANNELS
    head = (quadnet.nn.PolynomialBlock(channels * 7 * 7, 10, HEAD_RANK) if quadratic_head
            else torch.nn.Linear(channels * 7 * 7, 10))
    return torch.nn.Sequential(
        quadnet.nn.PolynomialConvBlock(1, 32, 3, rank=8, padding=1, norm=True, pool=2, rank_norm=rank_norm),
        quadnet.nn.PolynomialConvBlock(32, channels, 3, rank=16, padding=1, norm=True, pool=2, rank_norm=rank_norm),
        torch.nn.Flatten(), head)


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


MOMENTUM = 0.9
# weight decay: decoupled for Adam (AdamW), an L2 term for GLRAMSGD (on the canonical matrices) and SGD
OPTIMIZERS = {
    "adam": lambda model, lr, wd: torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd,
                                                   decoupled_weight_decay=True),
    "glramsgd": lambda model, lr, wd: quadnet.optim.GLRAMSGD(model, lr=lr, momentum=MOMENTUM, weight_decay=wd),
    "sgd": lambda model, lr, wd: torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM, weight_decay=wd),
}
OPTIMIZER_LABELS = {"adam": "Adam", "glramsgd": "GLRAMSGD", "sgd": "SGD"}


def random_shift(x, max_shift, generator):
    """Each image of ``x`` ((B, 784) pixels in [0, 1]) translated by up to ``max_shift`` pixels along
    each axis, independently per image; the border shifted in is 0 (the background)."""
    B = len(x)
    padded = F.pad(x.view(B, 28, 28), (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (2, B), generator=generator)
    rows = (offsets[0, :, None] + torch.arange(28))[:, :, None]  # (B, 28, 1)
    cols = (offsets[1, :, None] + torch.arange(28))[:, None, :]  # (B, 1, 28)
    return padded[torch.arange(B)[:, None, None], rows, cols].reshape(B, 784)


def train(make, lr, epochs, data, batch, label, eval_set, optimizer="adam", shift=0, label_smoothing=0.0, seed=0,
          weight_decay=0.0):
    """``optimizer`` (a key of OPTIMIZERS, with ``weight_decay``) + one-cycle, on batches randomly shifted
    by up to ``shift`` pixels, with cross-entropy smoothed by ``label_smoothing``; ``seed`` draws the init, the batch
    order and the shifts (the same for every model). Returns (model, history of (epoch, seconds,
    loss, accuracy on eval_set))."""
    xtr, ytr = data
    torch.manual_seed(seed)
    model = make()
    opt = OPTIMIZERS[optimizer](model, lr, weight_decay)
    steps = len(xtr) // batch
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)
    order = torch.Generator().manual_seed(1 + 10 * seed)
    shifts = torch.Generator().manual_seed(2 + 10 * seed)
    history = {"epoch": [], "seconds": [], "train_loss": [], "accuracy": []}
    elapsed = 0.0
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(len(xtr), generator=order)
        total = 0.0
        for i in range(steps):
            idx = perm[i * batch:(i + 1) * batch]
            start = time.perf_counter()
            inputs = random_shift(xtr[idx], shift, shifts) if shift else xtr[idx]
            loss = F.cross_entropy(model(inputs), ytr[idx], label_smoothing=label_smoothing)
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
        label = f"{run['model']}, {run['optimizer']} ({run['parameters']} params, lr {run['lr']:g})"
        axes[0].plot(h["epoch"], h["accuracy"], "o-", label=label)
        axes[1].plot(h["seconds"], h["accuracy"], "o-", label=label)
    for ax, xlabel in zip(axes, ["epoch", "training wall time (s)"]):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy")
        ax.axhline(TARGET_ACCURACY, color="gray", ls=":", lw=1)
        ax.grid(alpha=0.3)
    axes[0].legend()
    models = {run["model"] for run in runs.values()}
    fig.suptitle("Fashion-MNIST: polynomial convnet (degree 8, no ReLU) vs ReLU CNN of the same size"
                 if "ReLU CNN" in models else "Fashion-MNIST: the polynomial convnet (degree 8, no ReLU) by optimizer")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run_name(model, optimizer):
    """Adam's runs keep their model's name (the README's and older results' keys)."""
    return model if optimizer == "adam" else f"{model}, {OPTIMIZER_LABELS[optimizer]}"


def over_seeds(seeds):
    """A run's final test accuracy over its seeds: "mean ± standard deviation", or the one value."""
    return f"{seeds['mean']:.4f}" + (f" ± {seeds['std']:.4f}" if len(seeds["final_test_accuracy"]) > 1 else "")


def verdicts(runs, epochs):
    """Sentences that follow from the final test accuracies and times of ``runs``."""
    out = []
    if "polynomial" in runs and "ReLU CNN" in runs:
        p, r = runs["polynomial"], runs["ReLU CNN"]
        pm, rm = p["seeds"]["mean"], r["seeds"]["mean"]
        n = len(p["seeds"]["final_test_accuracy"])
        out.append(f"polynomial convnet {over_seeds(p['seeds'])} vs ReLU CNN {over_seeds(r['seeds'])}"
                   f" ({pm - rm:+.4f}; {n} seed{'s' if n > 1 else ''}) after {epochs} epochs; goal (>= "
                   f"{TARGET_ACCURACY} and >= the ReLU CNN in under 600 s of training): "
                   + ("met" if pm >= TARGET_ACCURACY and pm >= rm and p["train_seconds"] < 600 else "not met")
                   + f" ({p['train_seconds']:.0f} s); per step {p['seconds_per_step'] * 1e3:.0f} ms vs "
                   f"{r['seconds_per_step'] * 1e3:.0f} ms")
    by_optimizer = {run["optimizer"]: run for run in runs.values() if run["model"] == "polynomial"}
    if "GLRAMSGD" in by_optimizer and len(by_optimizer) > 1:
        g = by_optimizer["GLRAMSGD"]
        for other, run in by_optimizer.items():
            if other == "GLRAMSGD":
                continue
            gap = g["final_test_accuracy"] - run["final_test_accuracy"]
            ahead = "ahead of" if gap > 0 else ("level with" if gap == 0 else "behind")
            out.append(f"polynomial convnet: GLRAMSGD {g['final_test_accuracy']:.4f} {ahead} {other} "
                       f"{run['final_test_accuracy']:.4f} ({gap:+.4f}, one seed) after {epochs} epochs, at "
                       f"{g['seconds_per_step'] / run['seconds_per_step']:.2f}x its time a step")
    return out


def run_ablation(args, makers, data, test, pixels):
    """Each recipe of ABLATION on each model of --models, and each ARCHITECTURE_ABLATION variant of
    the polynomial net with the plain recipe (Adam at --ablation-lr, one-cycle, seed 0):
    {row: {model: final test accuracy}}, printed as a table of effects against "plain"."""
    def final(make, label, **options):
        return train(make, args.ablation_lr, args.epochs, data, args.batch, f"{label} (ablation)", test, "adam",
                     **options)[1]["accuracy"][-1]
    table = {recipe: {model: final(makers[model], f"{model}, {recipe}", **options) for model in args.models}
             for recipe, options in ABLATION.items()}
    if "polynomial" in args.models and not args.no_rank_norm and not args.linear_head:  # variants of the default
        for variant, options in ARCHITECTURE_ABLATION.items():
            make = lambda options=options: torch.nn.Sequential(pixels, polynomial_net(**options))  # noqa: E731
            table[f"polynomial {variant}"] = {"polynomial": final(make, f"polynomial {variant}")}
    print(f"\nablation (Adam lr {args.ablation_lr:g}, {args.epochs} epochs, 1 seed; test accuracy, change from plain):")
    for recipe, row in table.items():
        print(f"  {recipe:30s} " + "  ".join(f"{model} {acc:.4f} ({acc - table['plain'][model]:+.4f})"
                                            for model, acc in row.items()))
    return table


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--search-epochs", type=int, default=2)
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3], help="Adam's peak lrs to search")
    parser.add_argument("--glramsgd-lrs", type=float, nargs="+", default=[0.005, 0.01, 0.02])
    parser.add_argument("--sgd-lrs", type=float, nargs="+", default=[0.005, 0.01, 0.02])
    parser.add_argument("--optimizers", nargs="+", choices=list(OPTIMIZERS), default=["adam"],
                        help="optimizers for the polynomial net (the ReLU CNN is trained with Adam)")
    parser.add_argument("--models", nargs="+", choices=["polynomial", "ReLU CNN"], default=["polynomial", "ReLU CNN"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--shift", type=int, default=0,
                        help="random-shift augmentation: translate each training image by up to this many pixels")
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--weight-decay", type=float, default=0.0,
                        help="decoupled for Adam (AdamW); L2 for GLRAMSGD and SGD")
    parser.add_argument("--seeds", type=int, default=1, help="seeds of the final runs (mean and spread reported)")
    parser.add_argument("--ablation", action="store_true",
                        help="first train each model with each recipe of ABLATION (Adam, --ablation-lr, seed 0)")
    parser.add_argument("--ablation-lr", type=float, default=3e-3)
    parser.add_argument("--no-rank-norm", action="store_true",
                        help="the polynomial net without rank norms (the one GLRAMSGD can train)")
    parser.add_argument("--linear-head", action="store_true",
                        help="the polynomial net of before the quadratic head: 64 channels into a linear head")
    parser.add_argument("--train-size", type=int, default=55000, help="training images (the first N of the split)")
    parser.add_argument("--no-export", action="store_true", help="skip the AOTInductor export and the C++ check")
    parser.add_argument("--out", default="results/polynomial_convnet_fmnist")
    args = parser.parse_args()
    rank_norm = not args.no_rank_norm
    if rank_norm and "glramsgd" in args.optimizers:  # before any training: GLRAMSGD would refuse the net
        parser.error("--optimizers glramsgd needs --no-rank-norm: GLRAMSGD refuses rank-normed blocks (their forms "
                     "act on batch-normalised filter outputs, so there are no canonical matrices to project)")
    start = time.time()
    x, y = fashion_mnist.load("train")
    xte, yte = fashion_mnist.load("test")
    xtr, ytr, xval, yval = x[:-5000][:args.train_size], y[:-5000][:args.train_size], x[-5000:], y[-5000:]
    pixels = Pixels(float(xtr.mean()), float(xtr.std()))
    torch.manual_seed(0)
    quadratic_head = not args.linear_head
    poly_params = trainable(polynomial_net(rank_norm, quadratic_head))
    channels = matching_relu_channels(poly_params)
    makers = {"polynomial": lambda: torch.nn.Sequential(pixels, polynomial_net(rank_norm, quadratic_head)),
              "ReLU CNN": lambda: torch.nn.Sequential(pixels, relu_net(channels))}
    search_lrs = {"adam": args.lrs, "glramsgd": args.glramsgd_lrs, "sgd": args.sgd_lrs}
    # (run name, model, optimizer): the polynomial net with each optimizer asked for, the ReLU CNN with Adam.
    plan = [(run_name(model, opt), model, opt) for model in args.models
            for opt in (args.optimizers if model == "polynomial" else ["adam"])]
    print(f"Fashion-MNIST: {len(xtr)} train / {len(xval)} validation / {len(xte)} test; torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s); polynomial net {poly_params} parameters, ReLU CNN "
          f"(second conv {channels} channels) {trainable(relu_net(channels))}; runs: "
          + ", ".join(name for name, _, _ in plan))
    ablation = run_ablation(args, makers, (xtr, ytr), (xte, yte), pixels) if args.ablation else None
    runs, models = {}, {}
    for name, model_name, optimizer in plan:
        make = makers[model_name]
        search = {}
        for lr in search_lrs[optimizer] if len(search_lrs[optimizer]) > 1 else []:  # one lr: nothing to pick
            _, h = train(make, lr, args.search_epochs, (xtr, ytr), args.batch, f"{name} lr {lr:g} (search)",
                         (xval, yval), optimizer, args.shift, args.label_smoothing, weight_decay=args.weight_decay)
            search[lr] = h["accuracy"][-1]
        lr = max(search, key=search.get) if search else search_lrs[optimizer][0]
        print(f"{name}: validation accuracy after {args.search_epochs} epochs "
              + ", ".join(f"lr {k:g} {v:.4f}" for k, v in search.items()) + f" -> lr {lr:g}")
        # every seed: the same lr and recipe, its own init, batch order and shifts; seed 0's run is the one kept
        trained = [train(make, lr, args.epochs, (xtr, ytr), args.batch, f"{name} seed {seed}" if seed else name,
                         (xte, yte), optimizer, args.shift, args.label_smoothing, seed, args.weight_decay)
                   for seed in range(args.seeds)]
        model, h = trained[0]
        finals = [history["accuracy"][-1] for _, history in trained]
        reached = [t for t, a in zip(h["seconds"], h["accuracy"]) if a >= TARGET_ACCURACY]
        runs[name] = {"model": model_name, "optimizer": OPTIMIZER_LABELS[optimizer], "lr": lr,
                      "search_validation_accuracy": {str(k): v for k, v in search.items()},
                      "parameters": trainable(model), "history": h, "final_test_accuracy": h["accuracy"][-1],
                      "train_seconds": h["seconds"][-1], "seconds_per_step": h["seconds"][-1] / (
                          args.epochs * (len(xtr) // args.batch)),
                      "seconds_to_target": reached[0] if reached else None,
                      "seeds": {"final_test_accuracy": finals, "mean": statistics.mean(finals),
                                "std": statistics.stdev(finals) if len(finals) > 1 else 0.0}}
        models[name] = model
    os.makedirs(args.out, exist_ok=True)
    cpp = None
    if not args.no_export:  # the polynomial net of the first optimizer asked for
        poly_name = next((name for name, model, _ in plan if model == "polynomial"), None)
        if poly_name is not None:
            poly = models[poly_name].eval()
            model_path = export_aoti(poly, xte[:256], args.out)
            cpp = check_in_cpp(model_path, accuracy(poly, xte, yte)[1], args.out)
    plot(runs, os.path.join(args.out, "curves.png"))
    verdict = "; ".join(verdicts(runs, args.epochs))
    summary = {"epochs": args.epochs, "search_epochs": args.search_epochs, "lrs": search_lrs, "batch": args.batch,
               "shift": args.shift, "label_smoothing": args.label_smoothing, "weight_decay": args.weight_decay,
               "rank_norm": rank_norm,
               "quadratic_head": quadratic_head,
               "train_size": len(xtr), "runs": runs,
               "seeds": args.seeds, "ablation": ablation, "cpp_check": cpp, "verdict": verdict,
               "total_seconds": time.time() - start}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print("\nresults (test accuracy after the last epoch):")
    for name, run in runs.items():
        to_target = (f"{TARGET_ACCURACY} after {run['seconds_to_target']:.0f}s" if run["seconds_to_target"] is not None
                     else f"never {TARGET_ACCURACY}")
        seeds = f" (seeds: {over_seeds(run['seeds'])})" if len(run["seeds"]["final_test_accuracy"]) > 1 else ""
        print(f"  {name:22s} {run['parameters']} params  lr {run['lr']:g}  acc {run['final_test_accuracy']:.4f}"
              f"{seeds}  {run['train_seconds']:.0f}s ({run['seconds_per_step'] * 1e3:.0f} ms/step; {to_target})")
    print(f"verdict: {verdict}")
    print(f"saved {args.out}/results.json and {args.out}/curves.png; total {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
