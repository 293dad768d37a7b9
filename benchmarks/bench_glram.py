"""Factored projected step vs dense GLRAM on the materialised canonical matrices.

    .venv/bin/python benchmarks/bench_glram.py [--json results/bench_glram.json]

For each (B, d, r, n): time of quadnet.linalg.projected_step (thin QR + GLRAM on k×k cores,
k = r + B), of the dense route (materialise A_i = W^T S_i W − lr X^T diag(G_i) X, then
quadnet.linalg.glram warm-started from W), and of a plain forward+backward of the layer;
and the peak extra memory of each projection, measured in a fresh subprocess (ru_maxrss).
Both projections run the same GLRAM settings (tol=1e-6, max_iter=100, warm start).

The random step above is far from a training step (its gradient term dominates the model, so
GLRAM needs many iterations). The training rows time projected_step inside a real training
loop: a student layer of the same shape fitted by projected SGD (canonical lr TRAIN_LR) to a
random teacher layer on fresh Gaussian batches (MSE), warm-started from its current W as
GLRAMSGD does; medians over the steps after TRAIN_WARMUP. The floor row times what every
exact step must do at least once: the d×k float64 Gram matrix of [W^T | X^T] and one k×k
float64 eigen-solve (GLRAM needs one per iteration).
"""
import argparse
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
import quadnet  # noqa: E402
from common import save_rows  # noqa: E402
from quadnet.linalg import glram, projected_step  # noqa: E402
from quadnet.ops import canonical_form, canonical_gradient  # noqa: E402

SHAPES = [(128, 784, 25, 10), (128, 900, 10, 100)]
LR = 0.1
TRAIN_LR, TRAIN_STEPS, TRAIN_WARMUP = 0.01, 40, 10


def problem(B, d, r, n):
    torch.manual_seed(0)
    layer = quadnet.nn.QuadraticLayer(d, n, r)
    X = torch.randn(B, d)
    G = torch.randn(B, n) / B
    return layer, X, G


def factored(layer, X, G):
    return projected_step(layer.weight.detach(), layer.S.detach(), X, G, LR)


def dense(layer, X, G):
    with torch.no_grad():
        A = canonical_form(layer.weight, layer.S) - LR * canonical_gradient(X, G)
        return glram(A, layer.rank, init=layer.weight)


def forward_backward(layer, X, G):
    layer.zero_grad()
    layer(X).backward(G)


def median(values):
    return sorted(values)[len(values) // 2]


def training(B, d, r, n):
    """Projected SGD of a student layer towards a teacher: per-step projection time, GLRAM
    iterations and loss, and the trained layer's forward+backward timed on the last batch."""
    torch.manual_seed(1)
    teacher, student = quadnet.nn.QuadraticLayer(d, n, r), quadnet.nn.QuadraticLayer(d, n, r)
    seconds, iterations, losses = [], [], []
    for _ in range(TRAIN_STEPS):
        X = torch.randn(B, d)
        with torch.no_grad():
            target = teacher(X)
        Y = student(X)
        loss = torch.nn.functional.mse_loss(Y, target)
        (G,) = torch.autograd.grad(loss, Y)
        t0 = time.perf_counter()
        res = projected_step(student.weight.detach(), student.S.detach(), X, G, TRAIN_LR)
        seconds.append(time.perf_counter() - t0)
        with torch.no_grad():
            student.weight.copy_(res.weight)
            student.S.copy_(res.S)
        iterations.append(res.iterations)
        losses.append(loss.item())
    t_fb = median_time(forward_backward, student, X, G, repeats=50)
    return {"seconds": median(seconds[TRAIN_WARMUP:]), "iterations": median(iterations[TRAIN_WARMUP:]),
            "max_iterations": max(iterations[TRAIN_WARMUP:]), "forward_backward": t_fb,
            "loss_first": losses[0], "loss_last": sum(losses[-5:]) / 5}


def floor(B, d, r, n):
    """Times of the d×k Gram matrix and of one k×k eigen-solve, both float64."""
    k = r + B
    C = torch.randn(d, k, dtype=torch.float64)
    M = C.T @ C
    return {"gram": median_time(lambda: C.T @ C, repeats=50), "eigh": median_time(torch.linalg.eigh, M, repeats=50)}


def median_time(fn, *args, repeats=5, budget=20.0):
    fn(*args)
    times, start = [], time.perf_counter()
    while len(times) < repeats and (time.perf_counter() - start) < budget:
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return median(times)


def peak_extra_bytes(variant, shape):
    """Runs one projection in a fresh process; returns its peak RSS growth in bytes."""
    out = subprocess.run([sys.executable, __file__, "--measure", variant, *map(str, shape)],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def _status_kb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def measure(variant, shape):
    layer, X, G = problem(*shape)
    forward_backward(layer, X, G)  # touch allocator / BLAS buffers
    # Reset the peak-RSS mark (Linux: "5" > clear_refs), then read VmHWM after the projection.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kb("VmRSS")
    {"factored": factored, "dense": dense}[variant](layer, X, G)
    peak = _status_kb("VmHWM")
    print(max(0, peak - before) * 1024)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="results/bench_glram.json")
    parser.add_argument("--measure", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        return measure(args.measure[0], tuple(int(v) for v in args.measure[1:]))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; layer float32, projections in float64")
    rows = []
    for shape in SHAPES:
        B, d, r, n = shape
        layer, X, G = problem(*shape)
        t_fact = median_time(factored, layer, X, G)
        t_dense = median_time(dense, layer, X, G, repeats=3, budget=60.0)
        t_fb = median_time(forward_backward, layer, X, G, repeats=50)
        res_f, res_d = factored(layer, X, G), dense(layer, X, G)
        mem_f, mem_d = peak_extra_bytes("factored", shape), peak_extra_bytes("dense", shape)
        k = r + B
        train, low = training(*shape), floor(*shape)
        row = {
            "shape": list(shape), "k": k,
            "seconds": {"factored": t_fact, "dense": t_dense, "forward_backward": t_fb},
            "dense_over_factored": t_dense / t_fact, "factored_over_forward_backward": t_fact / t_fb,
            "iterations": {"factored": res_f.iterations, "dense": res_d.iterations},
            "objective": {"factored": float(res_f.objective[-1]), "dense": float(res_d.objective[-1])},
            "peak_extra_MB": {"factored": mem_f / 2**20, "dense": mem_d / 2**20},
            "model_MB": {"n_d2_float64": n * d * d * 8 / 2**20,
                         "d_k_plus_n_k2_float64": (d * k + n * k * k) * 8 / 2**20},
            "training": {**train, "step_over_forward_backward": train["seconds"] / train["forward_backward"]},
            "floor_seconds": low,
        }
        rows.append(row)
        print(f"(B,d,r,n)={shape}  k={k}")
        print(f"  time   factored {t_fact * 1e3:9.2f} ms   dense {t_dense * 1e3:9.2f} ms   "
              f"dense/factored {row['dense_over_factored']:7.1f}x")
        print(f"  layer forward+backward {t_fb * 1e3:.3f} ms   factored step / fwd+bwd {row['factored_over_forward_backward']:.1f}x")
        print(f"  iterations factored {res_f.iterations} dense {res_d.iterations};  objective factored "
              f"{row['objective']['factored']:.6g} dense {row['objective']['dense']:.6g}")
        print(f"  peak extra memory factored {mem_f / 2**20:8.1f} MB   dense {mem_d / 2**20:8.1f} MB   "
              f"(n·d² float64 = {row['model_MB']['n_d2_float64']:.1f} MB, "
              f"d·k + n·k² float64 = {row['model_MB']['d_k_plus_n_k2_float64']:.1f} MB)")
        print(f"  training (lr {TRAIN_LR}, steps {TRAIN_WARMUP}-{TRAIN_STEPS}): projected step {train['seconds'] * 1e3:.2f} ms, "
              f"GLRAM iterations median {train['iterations']} max {train['max_iterations']}, layer fwd+bwd "
              f"{train['forward_backward'] * 1e3:.3f} ms, step / fwd+bwd {row['training']['step_over_forward_backward']:.1f}x, "
              f"loss {train['loss_first']:.4g} -> {train['loss_last']:.4g}")
        print(f"  floor: d×k Gram {low['gram'] * 1e3:.2f} ms + one k×k eigh {low['eigh'] * 1e3:.2f} ms "
              f"= {(low['gram'] + low['eigh']) / t_fb:.1f}x fwd+bwd")
    save_rows(args.json, rows)


if __name__ == "__main__":
    main()
