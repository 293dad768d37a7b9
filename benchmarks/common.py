"""Helpers shared by the benchmark scripts."""
import json
import os
import time

import torch
from torch.utils.benchmark import Timer


def save_rows(path, rows, **extra):
    """Writes the benchmark rows as JSON with the torch version, thread count and ``extra``."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), **extra, "rows": rows},
                  f, indent=2)
    print(f"saved {path}")


def fwd_bwd_step(fn, inputs, grad):
    """A callable that runs fn(*inputs).backward(grad) once, from cleared gradients, synchronised."""
    def step():
        for t in inputs:
            t.grad = None
        fn(*inputs).backward(grad)
        if grad.is_cuda:
            torch.cuda.synchronize()
    return step


def time_fwd_bwd(fn, inputs, grad):
    """Median seconds of fn(*inputs).backward(grad), after two warm-up calls (compilation too)."""
    step = fwd_bwd_step(fn, inputs, grad)
    step()  # warm-up (and compilation, for compiled functions)
    step()
    timer = Timer("step()", globals={"step": step}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=1.0).median


def time_interleaved(fns, inputs, grad, rounds=5, min_run_time=0.2):
    """{name: median seconds of fn(*inputs).backward(grad)} for every fn of ``fns``, measured in
    ``rounds`` interleaved rounds (each round times every fn for ``min_run_time`` after one untimed
    call, in an order rotated from round to round) after two warm-up calls each. On a shared
    machine whose speed drifts over seconds, this keeps a slow spell from landing on one variant:
    the ratios between variants are taken over the same stretch of time."""
    steps = {name: fwd_bwd_step(fn, inputs, grad) for name, fn in fns.items()}
    for step in steps.values():  # warm-up (and compilation, for compiled functions)
        step()
        step()
    names, times = list(steps), {name: [] for name in steps}
    for k in range(rounds):
        for name in names[k % len(names):] + names[:k % len(names)]:
            steps[name]()  # one untimed call: each block measures the variant warm
            timer = Timer("step()", globals={"step": steps[name]}, num_threads=torch.get_num_threads())
            times[name].append(timer.blocked_autorange(min_run_time=min_run_time).median)
    return {name: sorted(values)[len(values) // 2] for name, values in times.items()}


def median_time(fn, *args, repeats=5, budget=20.0):
    """Median seconds of fn(*args) over `repeats` calls after one warm-up (fewer if they pass
    `budget` seconds)."""
    fn(*args)
    times, start = [], time.perf_counter()
    while len(times) < repeats and (time.perf_counter() - start) < budget:
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]
