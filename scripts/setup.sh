#!/usr/bin/env bash
# Makes the checkout ready to use: installs missing Debian packages, creates the Python venv
# (.venv, on Debian's python3 which has torch), builds and installs the Python package
# (editable), builds the C++ library + tests (build/cmake), installs the CMake package
# (build/install) and builds the C++ example app against it (build/example).
# Idempotent and incremental (ccache, ninja): a second run takes seconds.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PACKAGES=(g++ cmake ninja-build ccache libtorch-dev python3-torch python3-dev python3-venv
          python3-pybind11 pybind11-dev libgtest-dev libbenchmark-dev python3-pytest python3-numpy
          libopenblas0-pthread python3-sklearn python3-matplotlib dataset-fashion-mnist zlib1g-dev)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "== installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
fi

export PATH="/usr/lib/ccache:$PATH"
PYTHON="$ROOT/.venv/bin/python"
if [ ! -x "$PYTHON" ]; then
  echo "== creating .venv"
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
if ! "$PYTHON" -c "import quadnet" 2>/dev/null; then
  echo "== installing the quadnet Python package (editable)"
  "$PYTHON" -m pip install -q --no-build-isolation --no-index --no-deps -e .
else
  echo "== rebuilding the Python extension"
  "$PYTHON" setup.py -q build_ext --inplace
fi

# Where torch's CMake config lives (Debian: found by default; pip wheels: inside torch).
TORCH_CMAKE="$("$PYTHON" -c 'import torch; print(torch.utils.cmake_prefix_path)')"
PREFIX_PATH="$TORCH_CMAKE;${CMAKE_PREFIX_PATH:-}"

mkdir -p build
echo "== building the C++ library and tests"
cmake -S . -B build/cmake -G Ninja -DCMAKE_PREFIX_PATH="$PREFIX_PATH" > build/cmake-configure.log
cmake --build build/cmake
cmake --install build/cmake --prefix build/install > /dev/null

echo "== building the C++ example app against the installed package"
cmake -S examples/cpp -B build/example -G Ninja \
  -DCMAKE_PREFIX_PATH="$ROOT/build/install;$PREFIX_PATH" > build/example-configure.log
cmake --build build/example
