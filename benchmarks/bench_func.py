"""Per-sample gradients with torch.func: vmap(grad(...)) over quadnet's ops (their batching
decomposition) against the per-sample loop (what vmap without a batching rule does) and against
the same network written as a pure-PyTorch composition.

    .venv/bin/python benchmarks/bench_func.py [--threads 1] [--json results/bench_func.json]

Network: DeepPolynomialNet([784, 128, 10], ranks=[32, 16], quadratic_norm=False) (the main
demo's, without batch norm, which per-sample gradients exclude), batch 128, MSE loss; medians of whole per-sample
gradient computations.
"""
import argparse
import os
import sys

import torch
from torch.func import functional_call, grad, vmap

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
from common import median_time, save_rows  # noqa: E402

import quadnet  # noqa: E402


class CompositionBlock(torch.nn.Module):
    """A PolynomialBlock's function in plain PyTorch ops: y = (Wx)^T S_i (Wx) + b + skip(x)."""

    def __init__(self, block):
        super().__init__()
        q = block.quadratic
        self.weight, self.S, self.bias = (torch.nn.Parameter(t.detach().clone()) for t in (q.weight, q.S, q.bias))
        self.skip = torch.nn.Parameter(block.skip.weight.detach().clone())

    def forward(self, x):
        h = x @ self.weight.t()
        S = 0.5 * (self.S + self.S.transpose(1, 2))
        return torch.einsum("...j,ijk,...k->...i", h, S, h) + self.bias + x @ self.skip.t()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default="results/bench_func.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = quadnet.nn.DeepPolynomialNet([784, 128, 10], ranks=[32, 16], quadratic_norm=False)
    composition = torch.nn.Sequential(*(CompositionBlock(b) for b in net))
    x, target = torch.randn(128, 784), torch.randn(128, 10)

    def per_sample(model):
        params = {n: p.detach() for n, p in model.named_parameters()}

        def loss(p, xk, tk):
            return torch.nn.functional.mse_loss(functional_call(model, p, (xk.unsqueeze(0),)), tk.unsqueeze(0))
        return lambda: vmap(grad(loss), in_dims=(None, 0, 0))(params, x, target)

    def loop():
        out = []
        for k in range(x.shape[0]):
            net.zero_grad()
            torch.nn.functional.mse_loss(net(x[k:k + 1]), target[k:k + 1]).backward()
            out.append([p.grad.clone() for p in net.parameters()])
        return out

    quadnet_grads, composition_grads = per_sample(net)(), per_sample(composition)()
    for name, value in quadnet_grads.items():  # the two networks compute the same function
        other = composition_grads[name.replace("quadratic.", "").replace("skip.weight", "skip")]
        torch.testing.assert_close(value, other, rtol=1e-4, atol=1e-5)
    rows = []
    for label, fn in [("quadnet vmap(grad)", per_sample(net)), ("quadnet per-sample loop", loop),
                      ("pure-PyTorch composition vmap(grad)", per_sample(composition))]:
        seconds = median_time(fn)
        rows.append({"method": label, "ms": seconds * 1e3})
        print(f"{label:40s} {seconds * 1e3:9.2f} ms")
    base = rows[0]["ms"]
    for row in rows[1:]:
        print(f"  {row['method']}: {row['ms'] / base:.2f}x quadnet vmap(grad)")
    save_rows(args.json, rows, threads=args.threads)


if __name__ == "__main__":
    main()
