"""Helpers shared by the benchmark scripts."""
import json
import os

import torch


def save_rows(path, rows, **extra):
    """Writes the benchmark rows as JSON with the torch version, thread count and ``extra``."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), **extra, "rows": rows},
                  f, indent=2)
    print(f"saved {path}")
