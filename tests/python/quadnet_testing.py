"""Helpers shared by the Python tests (pytest discourages importing conftest).

DEVICES: every device the device-generic tests run the library on — the CPU, and CUDA where
there is one. conftest.py marks every test parametrised with ``device="cuda"`` as ``cuda``, so a
GPU run can select them (``pytest -m cuda``) and a CPU-only run skip nothing by accident.
"""
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
