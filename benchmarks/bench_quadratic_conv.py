"""Forward+backward time of quadnet's quadratic_conv2d vs pure-PyTorch compositions.

    .venv/bin/python benchmarks/bench_quadratic_conv.py [--device cuda] [--json results/bench_quadratic_conv.json]

Every variant computes y_i(p) = h(p)^T sym(S_i) h(p) + b_i with h = conv2d(x, W) (3×3, padding 1)
for a batch and backpropagates a random output gradient into x, W, S and b. The pure-PyTorch
compositions, each eagerly and under torch.compile (Inductor, fullgraph, static shapes):

- einsum: torch.einsum("nahw,oab,nbhw->nohw", h, sym(S), h);
- outer:  the r² products h_a h_b per pixel (channels last), one GEMM with the n flattened S_i;
- gemm:   Z = H [S_1 … S_n] per pixel (n·r values), then the n dot products with H (the dense
          layer's forward).

quadnet's op (conv2d, then the r(r+1)/2 products of h and one GEMM) runs eagerly and under
torch.compile too. Times are medians over five interleaved rounds of one run (every variant timed in
every round), and the ratios are taken within that run.
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
from common import save_rows, time_interleaved  # noqa: E402

import quadnet  # noqa: E402

# (batch, in_channels, height, width, out_channels, rank): the example size, and the two
# layers of the Fashion-MNIST polynomial convnet (examples/polynomial_convnet_fashion_mnist.py).
SHAPES = [(32, 32, 28, 28, 64, 16), (128, 32, 14, 14, 64, 16), (128, 1, 28, 28, 32, 8)]


def sym(S):
    return (S + S.transpose(1, 2)) / 2


def quadnet_op(x, W, S, b):
    return quadnet.ops.quadratic_conv2d(x, W, S, padding=1) + b.view(-1, 1, 1)


def einsum_form(x, W, S, b):
    h = F.conv2d(x, W, padding=1)
    return torch.einsum("nahw,oab,nbhw->nohw", h, sym(S), h) + b.view(-1, 1, 1)


def outer_form(x, W, S, b):
    H = F.conv2d(x, W, padding=1).permute(0, 2, 3, 1)
    U = (H.unsqueeze(-1) * H.unsqueeze(-2)).flatten(-2)
    return (U @ sym(S).flatten(1).t() + b).permute(0, 3, 1, 2)


def gemm_form(x, W, S, b):
    n, r = S.shape[0], S.shape[1]
    H = F.conv2d(x, W, padding=1).permute(0, 2, 3, 1)
    Z = (H @ sym(S).permute(1, 0, 2).reshape(r, n * r)).unflatten(-1, (n, r))
    return ((Z * H.unsqueeze(-2)).sum(-1) + b).permute(0, 3, 1, 2)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default="results/bench_quadratic_conv.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {name}, float32, forward+backward (ms)")
    variants = {"quadnet": quadnet_op, "einsum": einsum_form, "outer": outer_form, "gemm": gemm_form}
    columns = [c for v in variants for c in (v, v + " compiled")]
    print(f"{'N,C,H,W,n,r':>26}" + "".join(f"{c:>18}" for c in columns) + f"{'best-pt/qn':>12}")
    rows = []
    for N, C, H, Wd, n, r in SHAPES:
        x = torch.randn(N, C, H, Wd, device=device, requires_grad=True)
        W = (torch.randn(r, C, 3, 3, device=device) / (3 * C ** 0.5)).requires_grad_(True)
        S = torch.randn(n, r, r, device=device, requires_grad=True)
        b = torch.randn(n, device=device, requires_grad=True)
        g = torch.randn(N, n, H, Wd, device=device)
        torch._dynamo.reset()
        fns = {}
        for v, fn in variants.items():
            fns[v] = fn
            fns[v + " compiled"] = torch.compile(fn, fullgraph=True, dynamic=False)
        t = time_interleaved(fns, (x, W, S, b), g)
        best = min((c for c in columns if not c.startswith("quadnet")), key=t.get)
        row = {"shape": [N, C, H, Wd, n, r], "seconds": t, "best_pytorch": best,
               "best_pytorch_over_quadnet": t[best] / t["quadnet"]}
        rows.append(row)
        print(f"{str((N, C, H, Wd, n, r)):>26}" + "".join(f"{t[c] * 1e3:18.2f}" for c in columns)
              + f"{row['best_pytorch_over_quadnet']:>11.2f}x ({best})", flush=True)
    save_rows(args.json, rows, device=name)


if __name__ == "__main__":
    main()
