"""GLRAMSGD under DDP (gloo, 2 processes on loopback) equals one process on the whole batch."""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from quadnet.nn import QuadraticLayer
from quadnet.optim import GLRAMSGD

STEPS, BATCH = 3, 8


def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(QuadraticLayer(10, 4, 3), torch.nn.Linear(4, 3)).double()


def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS, 2 * BATCH, 10, generator=g, dtype=torch.float64)
    return x, torch.randint(0, 3, (STEPS, 2 * BATCH), generator=g)


def train(model, forward, xs, ys):
    opt = GLRAMSGD(model, lr=0.05, momentum=0.5)
    for x, y in zip(xs, ys):
        opt.zero_grad()
        F.cross_entropy(forward(x), y).backward()
        opt.step()


def worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        model = make_model()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        xs, ys = data()
        half = slice(rank * BATCH, (rank + 1) * BATCH)
        train(model, ddp, xs[:, half], ys[:, half])
        torch.save(model.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_matches_single_process(tmp_path):
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    single = make_model()
    xs, ys = data()
    train(single, single, xs, ys)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    initial = make_model().state_dict()
    for name, value in single.state_dict().items():
        assert not torch.equal(value, initial[name]), name
        torch.testing.assert_close(rank0[name], rank1[name], rtol=0, atol=0)
        torch.testing.assert_close(rank0[name], value, rtol=1e-9, atol=1e-10)
