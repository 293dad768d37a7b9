"""Factored projected step vs dense GLRAM on the materialised canonical matrices.

    .venv/bin/python benchmarks/bench_glram.py [--json results/bench_glram.json]

For each (B, d, r, n): time of quadnet.linalg.projected_step (thin QR + GLRAM on k×k cores,
k = r + B), of the dense route (materialise A_i = W^T S_i W − lr X^T diag(G_i) X, then
quadnet.linalg.glram warm-started from W), and of a plain forward+backward of the layer;
and the peak extra memory of each projection, measured in a fresh subprocess (ru_maxrss).
Both projections run the same GLRAM settings (tol=1e-6, max_iter=100, warm start).
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


def median_time(fn, *args, repeats=5, budget=20.0):
    fn(*args)
    times, start = [], time.perf_counter()
    while len(times) < repeats and (time.perf_counter() - start) < budget:
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


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
        row = {
            "shape": list(shape), "k": k,
            "seconds": {"factored": t_fact, "dense": t_dense, "forward_backward": t_fb},
            "dense_over_factored": t_dense / t_fact, "factored_over_forward_backward": t_fact / t_fb,
            "iterations": {"factored": res_f.iterations, "dense": res_d.iterations},
            "objective": {"factored": float(res_f.objective[-1]), "dense": float(res_d.objective[-1])},
            "peak_extra_MB": {"factored": mem_f / 2**20, "dense": mem_d / 2**20},
            "model_MB": {"n_d2_float64": n * d * d * 8 / 2**20,
                         "d_k_plus_n_k2_float64": (d * k + n * k * k) * 8 / 2**20},
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
    save_rows(args.json, rows)


if __name__ == "__main__":
    main()
