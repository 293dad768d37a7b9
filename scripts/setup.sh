#!/usr/bin/env bash
# Makes the checkout ready to use, from nothing, on Debian 12:
#   1. Debian packages that only Debian provides (compilers, CMake, ninja, ccache, GoogleTest,
#      zlib, clang-format, the Fashion-MNIST data set);
#   2. a Python venv (.venv) on the machine's python3, with torch installed first and pinned
#      (QUADNET_TORCH, default torch==2.13.0: an unpinned torch from PyPI is a CUDA build of
#      several GB), then the pinned Python dependencies of requirements.txt;
#   3. the quadnet Python package, editable, built against that torch (--no-build-isolation);
#   4. the C++ library and GoogleTest suite (build/cmake), the installed CMake package
#      (build/install) and the C++ example app built against it (build/example), all against
#      the LibTorch inside the venv's torch wheel (torch.utils.cmake_prefix_path).
# Idempotent and incremental (ninja, ccache): a second run takes seconds.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PACKAGES=(g++ cmake ninja-build ccache libgtest-dev zlib1g-dev clang-format dataset-fashion-mnist)
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
# pip builds the editable install in a temporary directory and later runs build in-place under
# build/; ccache hashes the working directory of a -g compile by default, so without this every
# object of the second build would miss and the whole extension would compile twice.
export CCACHE_NOHASHDIR=true
PYTHON="$ROOT/.venv/bin/python"
PIP=("$PYTHON" -m pip --disable-pip-version-check)
if [ ! -x "$PYTHON" ]; then
  echo "== creating .venv on $(command -v python3) ($(python3 --version))"
  python3 -m venv .venv
fi
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  TORCH_REQUIREMENT="${QUADNET_TORCH:-torch==2.13.0}"
  echo "== installing $TORCH_REQUIREMENT"
  "${PIP[@]}" install -q "$TORCH_REQUIREMENT"
fi
# Reinstalls only when requirements.txt changed since the last successful install.
STAMP=.venv/.quadnet-requirements
if ! cmp -s requirements.txt "$STAMP"; then
  echo "== installing the Python dependencies (requirements.txt)"
  "${PIP[@]}" install -q -r requirements.txt
  cp requirements.txt "$STAMP"
fi

if ! "$PYTHON" -c "import quadnet" 2>/dev/null; then
  echo "== installing the quadnet Python package (editable, against $("$PYTHON" -c 'import torch; print("torch", torch.__version__)'))"
  "${PIP[@]}" install -q --no-build-isolation --no-deps -e .
else
  echo "== rebuilding the Python extension"
  "$PYTHON" setup.py -q build_ext --inplace
fi

# LibTorch's CMake config inside the venv's torch wheel.
TORCH_CMAKE="$("$PYTHON" -c 'import torch; print(torch.utils.cmake_prefix_path)')"
PREFIX_PATH="$TORCH_CMAKE;${CMAKE_PREFIX_PATH:-}"

mkdir -p build
echo "== building the C++ library and tests"
cmake -S . -B build/cmake -G Ninja -DCMAKE_PREFIX_PATH="$PREFIX_PATH" -DPython3_EXECUTABLE="$PYTHON" \
  > build/cmake-configure.log || { cat build/cmake-configure.log; exit 1; }
cmake --build build/cmake
# internal headers that earlier versions installed must not linger in the package
rm -f build/install/include/quadnet/*/detail.h build/install/include/quadnet/linalg/solvers.h
cmake --install build/cmake --prefix build/install > /dev/null

echo "== building the C++ example app against the installed package"
cmake -S examples/cpp -B build/example -G Ninja \
  -DCMAKE_PREFIX_PATH="$ROOT/build/install;$PREFIX_PATH" > build/example-configure.log \
  || { cat build/example-configure.log; exit 1; }
cmake --build build/example
