#!/usr/bin/env bash
# The C++ library and its GoogleTest suite built with AddressSanitizer and
# UndefinedBehaviorSanitizer (build/sanitize, RelWithDebInfo) and run; any finding fails.
# Needs scripts/setup.sh to have run (the venv's torch provides LibTorch). LibTorch itself is
# not instrumented: what is checked is quadnet's code and its calls into LibTorch.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="$ROOT/.venv/bin/python"
[ -x "$PYTHON" ] || { echo "sanitize.sh: run scripts/setup.sh first (no .venv)" >&2; exit 1; }
export PATH="/usr/lib/ccache:$PATH"
TORCH_CMAKE="$("$PYTHON" -c 'import torch; print(torch.utils.cmake_prefix_path)')"

echo "== building the C++ library and tests with -fsanitize=address,undefined (build/sanitize)"
cmake -S . -B build/sanitize -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQUADNET_SANITIZE=address,undefined \
  -DCMAKE_PREFIX_PATH="$TORCH_CMAKE;${CMAKE_PREFIX_PATH:-}" > build/sanitize-configure.log \
  || { cat build/sanitize-configure.log; exit 1; }
cmake --build build/sanitize

echo "== C++ tests under ASan + UBSan"
export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:strict_init_order=1:detect_stack_use_after_return=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
ctest --test-dir build/sanitize --output-on-failure
