#!/usr/bin/env bash
# The whole test suite: sets up/builds what is needed (scripts/setup.sh), then runs the C++
# GoogleTest suite (ctest) and the Python suite (pytest, incl. the C++ example app).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh

echo "== C++ tests (ctest)"
ctest --test-dir build/cmake --output-on-failure
echo "== Python tests (pytest)"
.venv/bin/python -m pytest tests/python "$@"
