#!/usr/bin/env bash
# The main demo, from nothing: sets up/builds what is needed (scripts/setup.sh), then trains a
# deep polynomial network (DeepPolynomialNet([784, 128, 10]), degree 4, no ReLU) on
# Fashion-MNIST with GLRAMSGD, SGD and Adam, saves curves (PNG), figures (JSON) and the best
# model (TorchScript) under results/deep_polynomial_fmnist/, and classifies the test set with
# that model in the C++ example app. Extra args go to the script (see its --help).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
# OpenBLAS sizes its own thread pool by logical CPUs; where torch uses fewer threads (1 on the
# 2-vCPU development machine) the extra BLAS threads contend, and under load eigh slowed down
# 40x (measured). Match torch's thread count unless the caller chose.
OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-$(.venv/bin/python -c 'import torch; print(torch.get_num_threads())')}"
export OPENBLAS_NUM_THREADS
.venv/bin/python examples/train_deep_polynomial_fashion_mnist.py "$@"
