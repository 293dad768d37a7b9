"""Forward+backward time of quadnet's quadratic_form vs pure-PyTorch compositions and nn.Bilinear.

    .venv/bin/python benchmarks/bench_quadratic_form.py [--json results/bench_quadratic_form.json]

All variants compute y_i = (Wx)^T sym(S_i) (Wx) for a batch and backpropagate a random
output gradient into every input; nn.Bilinear gets the same canonical A_i = W^T S_i W as its
weight (its natural parameterisation, d×d per output). Times are medians from one run, and
the ratios are taken within that run (the machine is shared: compare ratios, not seconds).
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F
from torch.utils.benchmark import Timer

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
import quadnet  # noqa: E402
from common import save_rows  # noqa: E402

SHAPES = [(64, 64, 8, 8), (256, 784, 32, 10), (1024, 256, 64, 64), (512, 900, 16, 100)]


def sym(S):
    return (S + S.transpose(1, 2)) / 2


def quadnet_op(x, W, S):
    return quadnet.ops.quadratic_form(x, W, S)


def einsum_form(x, W, S):
    H = x @ W.t()
    return torch.einsum("bi,nij,bj->bn", H, sym(S), H)


def gemm_form(x, W, S):
    n, r = S.shape[0], S.shape[1]
    H = x @ W.t()
    Z = (H @ sym(S).permute(1, 0, 2).reshape(r, n * r)).view(-1, n, r)
    return torch.bmm(Z, H.unsqueeze(2)).squeeze(2)


def bilinear(x, A):
    return F.bilinear(x, x, A)


def time_fwd_bwd(fn, inputs, grad):
    def step():
        for t in inputs:
            t.grad = None
        fn(*inputs).backward(grad)
    step()  # warm-up
    timer = Timer("step()", globals={"step": step}, num_threads=torch.get_num_threads())
    once = timer.timeit(1).median
    if once > 1.0:  # nn.Bilinear at the large sizes: seconds per call, one timed call is enough
        return once
    return timer.blocked_autorange(min_run_time=1.0).median


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="results/bench_quadratic_form.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, forward+backward")
    header = f"{'B,d,r,n':>18} {'quadnet':>10} {'gemm':>10} {'einsum':>10} {'Bilinear':>10} {'best-pt/qn':>11} {'Bilin/qn':>9}"
    print(header)
    rows = []
    for B, d, r, n in SHAPES:
        x = torch.randn(B, d, requires_grad=True)
        W = torch.randn(r, d, requires_grad=True)
        S = torch.randn(n, r, r, requires_grad=True)
        A = quadnet.ops.canonical_form(W, S).detach().requires_grad_(True)
        g = torch.randn(B, n)
        t = {
            "quadnet": time_fwd_bwd(quadnet_op, (x, W, S), g),
            "gemm": time_fwd_bwd(gemm_form, (x, W, S), g),
            "einsum": time_fwd_bwd(einsum_form, (x, W, S), g),
            "bilinear": time_fwd_bwd(bilinear, (x, A), g),
        }
        best_pt = min(t["gemm"], t["einsum"])
        row = {"shape": [B, d, r, n], "seconds": t, "best_pytorch_over_quadnet": best_pt / t["quadnet"],
               "bilinear_over_quadnet": t["bilinear"] / t["quadnet"]}
        rows.append(row)
        ms = {k: f"{v * 1e3:9.3f}ms" for k, v in t.items()}
        print(f"{str((B, d, r, n)):>18} {ms['quadnet']:>10} {ms['gemm']:>10} {ms['einsum']:>10} "
              f"{ms['bilinear']:>10} {row['best_pytorch_over_quadnet']:>10.2f}x {row['bilinear_over_quadnet']:>8.1f}x")
    save_rows(args.json, rows)


if __name__ == "__main__":
    main()
