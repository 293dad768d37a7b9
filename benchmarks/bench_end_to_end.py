"""Per-step cost of overparameterized training vs the end-to-end optimizer and the baselines.

    .venv/bin/python benchmarks/bench_end_to_end.py [--json results/bench_end_to_end.json]

One full training step (zero_grad, forward, ℓ4 loss, backward, step) of a linear model, for:
plain SGD; SGD on quadnet.nn.OverparamLinear of depth 2 and 3 (explicit factors); quadnet.optim.
EndToEndSGD with N = 2, 3 (thin SVD per step); AdaGrad; Adam. Two sizes: the diabetes regression
of the ℓ4 example (442 × 10 → 1: the single-output closed form) and a square layer
(batch 128, 512 → 512: the SVD route). Median of repeated steps; ratios are to plain SGD, from
the same run.
"""
import argparse
import functools
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
from common import save_rows  # noqa: E402

import quadnet  # noqa: E402

SIZES = [(442, 10, 1), (128, 512, 512)]
# name -> (depth of the model's factorisation, optimizer (params, lr=...))
VARIANTS = {
    "SGD": (1, torch.optim.SGD),
    "SGD, depth 2": (2, torch.optim.SGD),
    "SGD, depth 3": (3, torch.optim.SGD),
    "EndToEndSGD N=2": (1, functools.partial(quadnet.optim.EndToEndSGD, depth=2)),
    "EndToEndSGD N=3": (1, functools.partial(quadnet.optim.EndToEndSGD, depth=3)),
    "AdaGrad": (1, torch.optim.Adagrad),
    "Adam": (1, torch.optim.Adam),
}


def setup(variant, d_in, d_out):
    depth, optimizer = VARIANTS[variant]
    model = (quadnet.nn.OverparamLinear(d_in, d_out, depth, init_scale=0.1) if depth > 1
             else torch.nn.Linear(d_in, d_out))
    return model, optimizer(model.parameters(), lr=1e-4)


def median_step(model, opt, x, y, repeats=30):
    def step():
        opt.zero_grad()
        (model(x) - y).pow(4).mean().backward()
        opt.step()
    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="results/bench_end_to_end.json")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), float32")
    rows = []
    for batch, d_in, d_out in SIZES:
        torch.manual_seed(0)
        x, y = torch.randn(batch, d_in), torch.randn(batch, d_out)
        print(f"(batch, in, out) = ({batch}, {d_in}, {d_out})")
        base = None
        for variant in VARIANTS:
            model, opt = setup(variant, d_in, d_out)
            seconds = median_step(model, opt, x, y)
            base = base or seconds
            rows.append({"batch": batch, "in": d_in, "out": d_out, "variant": variant,
                         "ms_per_step": seconds * 1e3, "ratio_to_sgd": seconds / base})
            print(f"  {variant:16s} {seconds * 1e3:8.3f} ms/step   {seconds / base:6.2f}x SGD")
    save_rows(args.json, rows)


if __name__ == "__main__":
    main()
