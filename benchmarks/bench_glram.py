"""Projected steps (both solvers) vs dense GLRAM on the materialised canonical matrices, and
GLRAMSGD steps vs SGD steps.

    .venv/bin/python benchmarks/bench_glram.py [--json results/bench_glram.json] [--threads 1]

For each (B, d, r, n): time of quadnet.linalg.projected_step with solver="rayleigh_ritz" (the
default: A_i applied through its factors) and solver="exact" (thin QR + full GLRAM iterations on
k×k cores, k = r + B), of the dense route (materialise A_i = W^T S_i W − lr X^T diag(G_i) X,
then the exact GLRAM warm-started from W: the original algorithm), and of a plain
forward+backward of the layer; and the peak extra memory of each projection, measured in a
fresh subprocess (ru_maxrss). All projections run the same settings (tol=1e-6, max_iter=100).

The random step above is far from a training step (its gradient term dominates the model, so
GLRAM needs many iterations). The training rows time projected_step inside a real training
loop: a student layer of the same shape fitted by projected SGD (canonical lr TRAIN_LR) to a
random teacher layer on fresh Gaussian batches (MSE), warm-started from its current W as
GLRAMSGD does; medians over the steps after TRAIN_WARMUP. The floor row times what every
exact step must do at least once: the d×k float64 Gram matrix of [W^T | X^T] and one k×k
float64 eigen-solve (GLRAM needs one per iteration).

The tangent rows time quadnet.linalg.tangent_step (GLRAMSGD's default projection: from the
layer's gradients, no batch) at the same (B, d, r, n), the gradients of the same random step.

The optimizer rows time whole training steps (zero_grad, forward, cross-entropy, backward,
step) on standardised Fashion-MNIST batches of 128: SGD (momentum 0.9), GLRAMSGD with
projection="tangent" (momentum 0.9) and with projection="full" and each solver, for
QuadraticLayer(784, 10, rank=25), for the main demo's DeepPolynomialNet([784, 128, 10],
[32, 16], norm=True) with the demo's settings (canonical lr 0.005, max_iter=3), and for the
polynomial convnet example's network (two PolynomialConvBlocks; tangent only: the full step
refuses convolutions); the variants of a model step in turn on each batch; medians after
warm-up.

--profile times tangent_step alone at the main demo's first layer (784 inputs, 128 outputs,
rank 32, a random layer's gradients, lr PROFILE_LR) with 0, 1, 2 and the default number of
GLRAM iterations allowed in its retraction, and lists the operators that take its time
(torch.profiler, self CPU time, grouped by input shapes).
"""
import argparse
import copy
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
from common import median_time, save_rows  # noqa: E402

import quadnet  # noqa: E402
from quadnet.linalg import glram, projected_step, tangent_step  # noqa: E402
from quadnet.ops import canonical_form, canonical_gradient  # noqa: E402

SHAPES = [(128, 784, 25, 10), (128, 900, 10, 100)]
LR = 0.1
TRAIN_LR, TRAIN_STEPS, TRAIN_WARMUP = 0.01, 40, 10
PROFILE_SHAPE, PROFILE_LR = (128, 784, 32, 128), 0.01


def problem(B, d, r, n):
    torch.manual_seed(0)
    layer = quadnet.nn.QuadraticLayer(d, n, r)
    X = torch.randn(B, d)
    G = torch.randn(B, n) / B
    return layer, X, G


def factored(layer, X, G, solver="rayleigh_ritz"):
    return projected_step(layer.weight.detach(), layer.S.detach(), X, G, LR, solver=solver)


def exact(layer, X, G):
    return factored(layer, X, G, "exact")


def layer_gradients(layer, X, G):
    """weight.grad and S.grad of the loss whose output gradient is G."""
    layer.zero_grad()
    layer(X).backward(G)
    return layer.weight.grad.clone(), layer.S.grad.clone()


def tangent(layer, X, G, grads=None):
    weight_grad, S_grad = grads if grads is not None else layer_gradients(layer, X, G)
    return tangent_step(layer.weight.detach(), layer.S.detach(), weight_grad, S_grad, LR)


def dense(layer, X, G):
    with torch.no_grad():
        A = canonical_form(layer.weight, layer.S) - LR * canonical_gradient(X, G)
        return glram(A, layer.rank, init=layer.weight, solver="exact")


def forward_backward(layer, X, G):
    layer.zero_grad()
    layer(X).backward(G)


def median(values):
    return sorted(values)[len(values) // 2]


def training(B, d, r, n, solver):
    """Projected SGD of a student layer towards a teacher: per-step projection time, GLRAM
    iterations and loss, and the trained layer's forward+backward timed on the last batch.
    Every step also runs the other solver from the same state: the largest relative excess of
    this solver's objective over the exact one's."""
    torch.manual_seed(1)
    teacher, student = quadnet.nn.QuadraticLayer(d, n, r), quadnet.nn.QuadraticLayer(d, n, r)
    seconds, iterations, losses, excess = [], [], [], []
    for _ in range(TRAIN_STEPS):
        X = torch.randn(B, d)
        with torch.no_grad():
            target = teacher(X)
        Y = student(X)
        loss = torch.nn.functional.mse_loss(Y, target)
        (G,) = torch.autograd.grad(loss, Y)
        t0 = time.perf_counter()
        res = projected_step(student.weight.detach(), student.S.detach(), X, G, TRAIN_LR, solver=solver)
        seconds.append(time.perf_counter() - t0)
        ref = projected_step(student.weight.detach(), student.S.detach(), X, G, TRAIN_LR, solver="exact")
        excess.append(float(res.objective[-1] / ref.objective[-1] - 1))
        with torch.no_grad():
            student.weight.copy_(res.weight)
            student.S.copy_(res.S)
        iterations.append(res.iterations)
        losses.append(loss.item())
    t_fb = median_time(forward_backward, student, X, G, repeats=50)
    return {"seconds": median(seconds[TRAIN_WARMUP:]), "iterations": median(iterations[TRAIN_WARMUP:]),
            "max_iterations": max(iterations[TRAIN_WARMUP:]), "forward_backward": t_fb,
            "loss_first": losses[0], "loss_last": sum(losses[-5:]) / 5, "max_objective_excess": max(excess)}


def fmnist_batches(steps, batch=128):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
    import fashion_mnist
    x, y = fashion_mnist.load("train")
    x = (x - x.mean(0)) / (x.std(0) + 0.1)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return [(x[i], y[i]) for i in order[:steps * batch].view(steps, batch)]


def optimizer_steps(steps=60, warmup=10):
    """Median seconds of a whole training step per model and optimizer (module docstring). The
    optimizers of one model take their steps in turn on each batch (the machine's speed drifts
    within minutes; interleaving gives every variant the same conditions)."""
    batches = fmnist_batches(steps)
    demo = sys.modules.get("demo") or _import_demo()
    convnet = sys.modules.get("polynomial_convnet_fashion_mnist") or _import_example(
        "polynomial_convnet_fashion_mnist")

    def models():
        torch.manual_seed(0)
        yield "QuadraticLayer(784, 10, rank=25)", quadnet.nn.QuadraticLayer(784, 10, 25), 0.01, False
        torch.manual_seed(0)
        yield "demo DeepPolynomialNet", quadnet.nn.DeepPolynomialNet(demo.SIZES, demo.RANKS, norm=True,
                                                                   quadratic_norm=demo.QUADRATIC_NORM), 0.02, False
        torch.manual_seed(0)
        yield "convnet example's polynomial net", convnet.polynomial_net(), 0.01, True

    def optimizer(label, model, name, lr, is_conv):
        kind = label.split()[-1]
        projection = "tangent" if kind == "tangent" else "full"
        solver = "rayleigh_ritz" if kind == "tangent" else kind
        if label == "SGD":
            return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        if name.startswith("demo"):
            return demo.glram_sgd(model, lr, solver=solver, projection=projection)
        if is_conv and projection == "full":
            return None  # projection="full" refuses quadratic convolutions
        momentum = 0.9 if projection == "tangent" else 0.0
        return quadnet.optim.GLRAMSGD(model, lr=lr, momentum=momentum, solver=solver, projection=projection)

    labels = ("SGD", "GLRAMSGD tangent", "GLRAMSGD rayleigh_ritz", "GLRAMSGD exact")
    rows = []
    for name, fresh, lr, is_conv in models():
        runs = {}
        for label in labels:
            model = copy.deepcopy(fresh)
            opt = optimizer(label, model, name, lr, is_conv)
            if opt is not None:
                runs[label] = (model, opt, [])
        for x, y in batches:
            if is_conv:
                x = x.view(-1, 1, 28, 28)
            for model, opt, times in runs.values():
                t0 = time.perf_counter()
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
                times.append(time.perf_counter() - t0)
        row = {"model": name}
        for label in labels:
            row[label] = median(runs[label][2][warmup:]) if label in runs else None
        for kind in ("tangent", "rayleigh_ritz", "exact"):
            t = row[f"GLRAMSGD {kind}"]
            row[f"{kind}_over_sgd"] = t / row["SGD"] if t is not None else None
        rows.append(row)

        def cell(kind):
            t = row[f"GLRAMSGD {kind}"]
            if t is None:
                return "n/a (refuses convolutions)"
            return f"{t * 1e3:.2f} ms ({row[f'{kind}_over_sgd']:.2f}x SGD)"
        print(f"  {name}: step SGD {row['SGD'] * 1e3:.2f} ms, GLRAMSGD tangent {cell('tangent')}, "
              f"full rayleigh_ritz {cell('rayleigh_ritz')}, exact {cell('exact')}")
    return rows


def _import_demo():
    return _import_example("train_deep_polynomial_fashion_mnist", as_name="demo")


def _import_example(file_stem, as_name=None):
    import importlib.util
    examples = os.path.join(os.path.dirname(__file__), "..", "examples")
    if examples not in sys.path:
        sys.path.insert(0, examples)  # the examples import their fashion_mnist helper
    spec = importlib.util.spec_from_file_location(as_name or file_stem, os.path.join(examples, f"{file_stem}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[as_name or file_stem] = module
    spec.loader.exec_module(module)
    return module


def floor(B, d, r, n):
    """Times of the d×k Gram matrix and of one k×k eigen-solve, both float64."""
    k = r + B
    C = torch.randn(d, k, dtype=torch.float64)
    M = C.T @ C
    return {"gram": median_time(lambda: C.T @ C, repeats=50), "eigh": median_time(torch.linalg.eigh, M, repeats=50)}


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
    {"factored": factored, "exact": exact, "dense": dense}[variant](layer, X, G)
    peak = _status_kb("VmHWM")
    print(max(0, peak - before) * 1024)


def profile_tangent(top=10):
    """Where a tangent step's time goes at the demo's first layer (see the module docstring)."""
    from quadnet.linalg import DEFAULT_MAX_ITER
    layer, X, G = problem(*PROFILE_SHAPE)
    weight_grad, S_grad = layer_gradients(layer, X, G)
    weight, S = layer.weight.detach(), layer.S.detach()

    def step(max_iter):
        return tangent_step(weight, S, weight_grad, S_grad, PROFILE_LR, max_iter=max_iter)

    B, d, r, n = PROFILE_SHAPE
    print(f"tangent_step at d={d}, n={n}, r={r}, lr {PROFILE_LR}: retraction on {n} matrices of {2 * r}x{2 * r}")
    t_fb = median_time(forward_backward, layer, X, G, repeats=20)
    print(f"  layer forward+backward (batch {B}) {t_fb * 1e3:.2f} ms")
    for max_iter in (0, 1, 2, DEFAULT_MAX_ITER):
        t = median_time(step, max_iter, repeats=20)
        print(f"  max_iter {max_iter:3d}: {t * 1e3:7.2f} ms  ({step(max_iter).iterations} GLRAM iterations, "
              f"{t / t_fb:.1f}x fwd+bwd)")
    calls = 10
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(calls):
            step(DEFAULT_MAX_ITER)
    print(f"  operators by self CPU time over {calls} calls at the default max_iter:")
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=top,
                                                              max_name_column_width=24,
                                                              max_shapes_column_width=60))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="results/bench_glram.json")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps-only", action="store_true", help="only the whole-training-step rows")
    parser.add_argument("--profile", action="store_true", help="only the profile of tangent_step")
    parser.add_argument("--measure", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.measure:
        return measure(args.measure[0], tuple(int(v) for v in args.measure[1:]))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; layer float32, projections in float64")
    if args.profile:
        return profile_tangent()
    rows = []
    for shape in [] if args.steps_only else SHAPES:
        B, d, r, n = shape
        layer, X, G = problem(*shape)
        variants = {"rayleigh_ritz": factored, "exact": exact, "dense": dense}
        t = {name: median_time(fn, layer, X, G, **({"repeats": 3, "budget": 60.0} if name == "dense" else {}))
             for name, fn in variants.items()}
        t_fb = median_time(forward_backward, layer, X, G, repeats=50)
        grads = layer_gradients(layer, X, G)
        t_tangent = median_time(tangent, layer, X, G, grads, repeats=50)
        res = {name: fn(layer, X, G) for name, fn in variants.items()}
        mem = {name: peak_extra_bytes("factored" if name == "rayleigh_ritz" else name, shape) for name in variants}
        k = r + B
        train = {solver: training(*shape, solver) for solver in ("rayleigh_ritz", "exact")}
        low = floor(*shape)
        row = {
            "shape": list(shape), "k": k,
            "seconds": {**t, "tangent": t_tangent, "forward_backward": t_fb},
            "tangent_over_forward_backward": t_tangent / t_fb,
            "dense_over": {name: t["dense"] / t[name] for name in ("rayleigh_ritz", "exact")},
            "over_forward_backward": {name: t[name] / t_fb for name in ("rayleigh_ritz", "exact")},
            "iterations": {name: r_.iterations for name, r_ in res.items()},
            "objective": {name: float(r_.objective[-1]) for name, r_ in res.items()},
            "peak_extra_MB": {name: m / 2**20 for name, m in mem.items()},
            "model_MB": {"n_d2_float64": n * d * d * 8 / 2**20,
                         "d_k_plus_n_k2_float64": (d * k + n * k * k) * 8 / 2**20},
            "training": {solver: {**tr, "step_over_forward_backward": tr["seconds"] / tr["forward_backward"]}
                         for solver, tr in train.items()},
            "floor_seconds": low,
        }
        rows.append(row)
        print(f"(B,d,r,n)={shape}  k={k}   layer forward+backward {t_fb * 1e3:.3f} ms")
        for name in variants:
            extra = (f"  dense/this {row['dense_over'][name]:6.1f}x   "
                     f"this/fwd+bwd {row['over_forward_backward'][name]:5.1f}x" if name != "dense" else "")
            print(f"  {name:13s} {t[name] * 1e3:9.2f} ms  iterations {res[name].iterations:3d}  objective "
                  f"{row['objective'][name]:.6g}  peak extra {mem[name] / 2**20:7.1f} MB{extra}")
        print(f"  tangent       {t_tangent * 1e3:9.2f} ms  (gradients only)   this/fwd+bwd {t_tangent / t_fb:5.2f}x")
        print(f"  (n·d² float64 = {row['model_MB']['n_d2_float64']:.1f} MB, "
              f"d·k + n·k² float64 = {row['model_MB']['d_k_plus_n_k2_float64']:.1f} MB)")
        for solver, tr in row["training"].items():
            print(f"  training {solver:13s} (lr {TRAIN_LR}, steps {TRAIN_WARMUP}-{TRAIN_STEPS}): projected step "
                  f"{tr['seconds'] * 1e3:.2f} ms, iterations median {tr['iterations']} max {tr['max_iterations']}, "
                  f"step / fwd+bwd {tr['step_over_forward_backward']:.1f}x, loss {tr['loss_first']:.4g} -> "
                  f"{tr['loss_last']:.4g}, objective vs exact at most {tr['max_objective_excess']:+.1e}")
        print(f"  floor of the exact route: d×k Gram {low['gram'] * 1e3:.2f} ms "
              f"+ one k×k eigh {low['eigh'] * 1e3:.2f} ms "
              f"= {(low['gram'] + low['eigh']) / t_fb:.1f}x fwd+bwd")
    print("whole training steps (Fashion-MNIST, batch 128):")
    steps = optimizer_steps()
    save_rows(args.json, rows, optimizer_steps=steps)


if __name__ == "__main__":
    main()
