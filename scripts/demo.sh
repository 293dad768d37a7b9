#!/usr/bin/env bash
# The main demo, from nothing: sets up/builds what is needed (scripts/setup.sh), then trains a
# deep polynomial network (DeepPolynomialNet([784, 128, 10]), degree 4, no ReLU) on
# Fashion-MNIST with GLRAMSGD, SGD and Adam, saves curves (PNG), figures (JSON) and the best
# model (torch.export + AOTInductor package, model.pt2) under results/deep_polynomial_fmnist/,
# and classifies the test set with that package in the C++ example app. Extra args go to the
# script (see its --help).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
.venv/bin/python examples/train_deep_polynomial_fashion_mnist.py "$@"
