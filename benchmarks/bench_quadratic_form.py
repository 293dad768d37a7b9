"""Forward+backward time of quadnet's quadratic_form vs pure-PyTorch compositions and nn.Bilinear.

    .venv/bin/python benchmarks/bench_quadratic_form.py [--device cuda] [--json results/bench_quadratic_form.json]

All variants compute y_i = (Wx)^T sym(S_i) (Wx) for a batch and backpropagate a random
output gradient into every input. The pure-PyTorch compositions (a GEMM form and an einsum
form) run eagerly and under torch.compile (Inductor, fullgraph, static shapes); quadnet's op
runs eagerly and under torch.compile too. nn.Bilinear gets the same canonical
A_i = W^T S_i W as its weight (its natural parameterisation, d×d per output); where one call
would take seconds it is timed on a slice of the batch and scaled to the full batch (its cost
is linear in the batch), marked "~". Times are medians over five interleaved rounds of one run
(every variant timed in every round; nn.Bilinear on its own), and the ratios are taken within that
run (the machine is shared: compare ratios, not seconds).
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
from common import save_rows, time_fwd_bwd, time_interleaved  # noqa: E402

import quadnet  # noqa: E402

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


# nn.Bilinear costs ~3·B·n·d² flops a step: time it on at most this many flops and scale.
BILINEAR_FLOP_BUDGET = 3e8


def time_bilinear(x, A, grad):
    """(seconds for the full batch, whether it was scaled from a slice)."""
    B, n, d = x.shape[0], A.shape[0], A.shape[1]
    rows = max(1, min(B, int(BILINEAR_FLOP_BUDGET / (3 * n * d * d))))
    xs = x[:rows].detach().requires_grad_(True)
    return time_fwd_bwd(bilinear, (xs, A), grad[:rows]) * B / rows, rows < B


COMPILED = {}


def compiled(fn):
    """torch.compile(fn) with Inductor, one graph, static shapes (the fastest code it makes)."""
    if fn not in COMPILED:
        COMPILED[fn] = torch.compile(fn, fullgraph=True, dynamic=False)
    return COMPILED[fn]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default="results/bench_quadratic_form.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {name}, float32, forward+backward (ms)")
    columns = ["quadnet", "quadnet compiled", "gemm", "gemm compiled", "einsum", "einsum compiled"]
    print(f"{'B,d,r,n':>20}" + "".join(f"{c:>17}" for c in columns) + f"{'Bilinear':>12}"
          + f"{'best-pt/qn':>12}{'Bilin/qn':>10}")
    rows = []
    for B, d, r, n in SHAPES:
        x = torch.randn(B, d, device=device, requires_grad=True)
        W = torch.randn(r, d, device=device, requires_grad=True)
        S = torch.randn(n, r, r, device=device, requires_grad=True)
        A = quadnet.ops.canonical_form(W, S).detach().requires_grad_(True)
        g = torch.randn(B, n, device=device)
        torch._dynamo.reset()  # every compiled function compiles for this shape afresh
        COMPILED.clear()
        fns = dict(zip(columns, [quadnet_op, compiled(quadnet_op), gemm_form, compiled(gemm_form), einsum_form,
                                 compiled(einsum_form)]))
        t = time_interleaved(fns, (x, W, S), g)
        t["bilinear"], scaled = time_bilinear(x, A, g)
        quadnet_default = t["quadnet"]  # what a user gets without torch.compile
        best_pt = min(t[c] for c in columns[2:])
        row = {"shape": [B, d, r, n], "seconds": t, "bilinear_scaled_from_slice": scaled,
               "best_pytorch": min(columns[2:], key=t.get),
               "best_pytorch_over_quadnet": best_pt / quadnet_default,
               "bilinear_over_quadnet": t["bilinear"] / quadnet_default}
        rows.append(row)
        cells = "".join(f"{t[c] * 1e3:17.3f}" for c in columns)
        bilinear_cell = ("~" if scaled else "") + f"{t['bilinear'] * 1e3:.1f}"
        print(f"{str((B, d, r, n)):>20}{cells}{bilinear_cell:>12}{row['best_pytorch_over_quadnet']:>11.2f}x"
              f"{row['bilinear_over_quadnet']:>9.0f}x", flush=True)
    save_rows(args.json, rows, device=name)


if __name__ == "__main__":
    main()
