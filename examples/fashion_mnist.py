"""Fashion-MNIST from Debian's dataset-fashion-mnist package (idx files, nothing downloaded)."""
import gzip
import os

import numpy as np
import torch

ROOT = os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")


def _read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load(split="train"):
    """Returns (images float32 (N, 784) in [0, 1], labels int64 (N,))."""
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(os.path.join(ROOT, f"{prefix}-images-idx3-ubyte.gz"))
    labels = _read_idx(os.path.join(ROOT, f"{prefix}-labels-idx1-ubyte.gz"))
    x = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255.0)
    return x, torch.from_numpy(labels.astype(np.int64))


class Pixels(torch.nn.Module):
    """(N, 784) pixels in [0, 1] -> standardised (N, 1, 28, 28) images; mean and std are buffers, so
    the standardisation is part of a saved or exported model."""

    def __init__(self, mean: float, std: float):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.std).view(-1, 1, 28, 28)
