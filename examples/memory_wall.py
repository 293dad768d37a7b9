"""The memory wall, measured: GLRAMSGD on a convolution-sized quadratic layer (d = 900, n = 100, rank 10).

    .venv/bin/python examples/memory_wall.py [--steps 400] [--out results/memory_wall]

Gissin ("Over-Parameterization and Optimization III") sizes the cost of projections on a
convolutional layer with ~100 input channels and a 3×3 window: d ≈ 900 inputs, ~100 outputs, so
"the entire layer requires storing and operating on 100 million parameters during the GLRAM
projections" — n·d² canonical entries — and concludes that projections cannot scale. quadnet's
projected step never forms them (docs/glram.rst, "The factored step" and "Solvers").

Here: Fashion-MNIST images padded to 30×30 (d = 900), standardised, through
QuadraticLayer(900, 100, rank=10) → BatchNorm1d(100) → Linear(100, 10), trained with GLRAMSGD
(the quadratic layer projected, the rest SGD with momentum) and, for reference, with SGD and
Adam. Reported: per step, the time of the forward+backward and of the optimizer step; the peak
resident memory above what the model and data already hold, over the whole run after a 3-step
warm-up on a throwaway model (a bound on any step's extra memory: forward, backward and
projection together; the warm-up keeps one-time costs out, e.g. LAPACK code paged in); the memory
and time one projection takes by the original dense route (materialise the n canonical d×d matrices, GLRAM
on them; measured in a fresh process) next to the n·d² float64 entries it must hold; and test
accuracy. Saves results.json and memory_wall.png.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "python"))
import fashion_mnist  # noqa: E402

import quadnet  # noqa: E402

D, N, RANK, BATCH = 900, 100, 10, 128
# GLRAMSGD: canonical steps at a quarter (as the main demo); "GLRAMSGD-full": projection="full",
# the batch's canonical step then GLRAM (the default is the tangent-space step, from the gradients).
LRS = {"GLRAMSGD": 0.02, "GLRAMSGD-full": 0.02, "SGD": 0.02, "Adam": 2e-3}


def status_kb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def reset_peak():
    """Linux: writing 5 to clear_refs resets VmHWM (the peak resident set) to the current RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def load():
    xtr, ytr = fashion_mnist.load("train")
    xte, yte = fashion_mnist.load("test")
    pad = lambda x: F.pad(x.view(-1, 28, 28), (1, 1, 1, 1)).reshape(-1, D)  # noqa: E731
    xtr, xte = pad(xtr), pad(xte)
    mean, scale = xtr.mean(0), xtr.std(0) + 0.1
    return (xtr - mean) / scale, ytr, (xte - mean) / scale, yte


def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(quadnet.nn.QuadraticLayer(D, N, rank=RANK), torch.nn.BatchNorm1d(N),
                               torch.nn.Linear(N, 10))


def make_optimizer(name, model, lr):
    if name == "SGD":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    if name == "Adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    quadratic = model[0]
    rest = [p for m in list(model)[1:] for p in m.parameters()]
    return quadnet.optim.GLRAMSGD([{"params": [quadratic.weight, quadratic.S, quadratic.bias], "lr": lr / 4},
                                   {"params": rest}], lr=lr, momentum=0.9,
                                  projection="full" if name == "GLRAMSGD-full" else "tangent")


def accuracy(model, x, y):
    model.eval()
    with torch.no_grad():
        acc = float((torch.cat([model(c).argmax(1) for c in x.split(2500)]) == y).float().mean())
    model.train()
    return acc


def warm_up(name, data):
    """A few steps on a throwaway model: one-time costs (LAPACK code paged in, BLAS buffers) are
    not the step's memory."""
    model = make_model()
    opt = make_optimizer(name, model, LRS[name])
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(data[0][:BATCH]), data[1][:BATCH]).backward()
        opt.step()
    accuracy(model, data[2], data[3])


def train(name, data, args):
    xtr, ytr, xte, yte = data
    warm_up(name, data)
    model = make_model()
    opt = make_optimizer(name, model, LRS[name])
    order = torch.Generator().manual_seed(1)
    forward_backward, steps, history = [], [], {"step": [], "test_accuracy": []}
    reset_peak()
    baseline = status_kb("VmRSS")
    for step in range(1, args.steps + 1):
        idx = torch.randint(len(xtr), (BATCH,), generator=order)
        t0 = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
        t1 = time.perf_counter()
        opt.step()
        t2 = time.perf_counter()
        forward_backward.append(t1 - t0)
        steps.append(t2 - t1)
        if step % args.eval_every == 0 or step == args.steps:
            history["step"].append(step)
            history["test_accuracy"].append(accuracy(model, xte, yte))
            print(f"\r  {name:8s} [{'#' * int(30 * step / args.steps):30s}] step {step}/{args.steps} "
                  f"test acc {history['test_accuracy'][-1]:.4f}", end="", flush=True)
    peak_extra = (status_kb("VmHWM") - baseline) / 1024
    print()
    median = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    return {"optimizer": name, "lr": LRS[name], "history": history,
            "final_test_accuracy": history["test_accuracy"][-1],
            "ms_forward_backward": 1e3 * median(forward_backward), "ms_optimizer_step": 1e3 * median(steps),
            "peak_extra_MB_over_run": peak_extra}


def dense_projection():
    """(peak resident growth in MB, seconds) of one projection by the dense route, in a fresh process."""
    out = subprocess.run([sys.executable, __file__, "--measure-dense"], capture_output=True, text=True, check=True)
    mb, seconds = out.stdout.split()[-2:]
    return float(mb), float(seconds)


def measure_dense():
    model = make_model()
    layer = model[0]
    X, G = torch.randn(BATCH, D), torch.randn(BATCH, N) / BATCH
    reset_peak()
    before = status_kb("VmRSS")
    start = time.perf_counter()
    with torch.no_grad():
        A = quadnet.ops.canonical_form(layer.weight, layer.S) - 0.005 * quadnet.ops.canonical_gradient(X, G)
        quadnet.linalg.glram(A, RANK, init=layer.weight, solver="exact")
    print((status_kb("VmHWM") - before) / 1024, time.perf_counter() - start)


def plot(runs, dense_mb, canonical_mb, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [r["optimizer"] for r in runs] + ["dense route\n(one step)", "n·d²\nfloat64"]
    values = [r["peak_extra_MB_over_run"] for r in runs] + [dense_mb, canonical_mb]
    ax0.bar(names, values, color=["C0", "C1", "C2", "C3", "C7"][:len(values)])
    ax0.set_yscale("log")
    ax0.set_ylabel("MB above model + data")
    ax0.set_title(f"memory: QuadraticLayer({D}, {N}, rank={RANK}), batch {BATCH}")
    for i, v in enumerate(values):
        ax0.text(i, v, f"{v:.0f}", ha="center", va="bottom")
    for r in runs:
        ax1.plot(r["history"]["step"], r["history"]["test_accuracy"], "o-", label=f"{r['optimizer']} (lr {r['lr']:g})")
    ax1.set_xlabel("iteration")
    ax1.set_ylabel("test accuracy")
    ax1.grid(alpha=0.3)
    ax1.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--out", default="results/memory_wall")
    parser.add_argument("--measure-dense", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_dense:
        return measure_dense()
    start = time.time()
    data = load()
    print(f"Fashion-MNIST padded to 30x30 (d={D}); QuadraticLayer({D}, {N}, rank={RANK}) -> BatchNorm1d -> "
          f"Linear({N}, 10); batch {BATCH}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    runs = [train(name, data, args) for name in LRS]
    dense_mb, dense_seconds = dense_projection()
    canonical_mb = N * D * D * 8 / 2**20
    print(f"\n{'optimizer':13s} {'test acc':>8s} {'fwd+bwd':>9s} {'opt.step':>9s} {'peak extra (whole run)':>24s}")
    for r in runs:
        print(f"{r['optimizer']:13s} {r['final_test_accuracy']:8.4f} {r['ms_forward_backward']:7.2f}ms "
              f"{r['ms_optimizer_step']:7.2f}ms {r['peak_extra_MB_over_run']:20.1f} MB")
    print(f"one projection by the dense route: {dense_mb:.0f} MB peak extra, {dense_seconds:.1f} s; "
          f"its n·d² float64 canonical entries alone: {canonical_mb:.0f} MB")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"shape": {"d": D, "n": N, "rank": RANK, "batch": BATCH}, "steps": args.steps, "runs": runs,
                   "dense_projection_peak_extra_MB": dense_mb, "dense_projection_seconds": dense_seconds,
                   "canonical_float64_MB": canonical_mb,
                   "torch": torch.__version__, "threads": torch.get_num_threads()}, f, indent=1)
    plot(runs, dense_mb, canonical_mb, os.path.join(args.out, "memory_wall.png"))
    print(f"saved {args.out}/results.json and {args.out}/memory_wall.png ({time.time() - start:.0f}s)")


if __name__ == "__main__":
    main()
