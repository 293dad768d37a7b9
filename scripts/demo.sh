#!/usr/bin/env bash
# The main demo, from nothing: sets up/builds what is needed (scripts/setup.sh), then trains
# QuadraticLayer(784, 10, rank=25) on Fashion-MNIST with SGD, Adam and GLRAMSGD and saves
# curves (PNG) and figures (JSON) under results/quadratic_fmnist/. Extra args go to the script.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
.venv/bin/python examples/train_quadratic_fashion_mnist.py "$@"
