#!/usr/bin/env bash
# The wheel, as a user installs it (CI runs this after the test command):
#   1. built against the development venv's torch: pip wheel --no-build-isolation (scripts/setup.sh
#      first); its version names that torch (0.1.0+pt213cpu) and it requires that release
#      (Requires-Dist: torch==2.13.*);
#   2. installed, without an index, into a separate venv that holds only that torch (build/wheel/venv,
#      kept between runs; the wheel is reinstalled every time);
#   3. used from outside the source tree: import, forward, backward, a GLRAMSGD step, export;
#      and its C++ package (libquadnet.so, headers, CMake config at quadnet.utils.cmake_prefix_path):
#      the example app built against it alone (LibTorch found beside it), then the C++ interop tests
#      (state dicts, TorchScript, AOTInductor) run with that app (build/wheel/app);
#   4. the sdist (setup.py sdist: plain version, torch>=2.6): installed into the same venv with
#      pip install --no-build-isolation (compiled there against its torch), the smoke test again;
#      and refused with the fix named in a venv without torch.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="/usr/lib/ccache:$PATH" CCACHE_NOHASHDIR=true  # reuses the editable build's objects
DEV="$ROOT/.venv/bin/python"
OUT="$ROOT/build/wheel"
rm -rf "$OUT/dist"
echo "== building the wheel"
"$DEV" -m pip wheel --disable-pip-version-check -q --no-build-isolation --no-deps -w "$OUT/dist" . 2>&1 \
  | grep -v "^WARNING: Location" || true
WHEEL="$(ls "$OUT"/dist/quadnet-*.whl)"
TORCH="$("$DEV" -c 'import torch; print(torch.__version__.split("+")[0])')"
RELEASE="${TORCH%.*}"
TAG="pt${RELEASE/./}$("$DEV" -c 'import torch; print("cu" + torch.version.cuda.replace(".", "") if torch.version.cuda else "cpu")')"
echo "   $(basename "$WHEEL")"
case "$(basename "$WHEEL")" in *"+$TAG-"*) ;; *) echo "wheel version lacks +$TAG"; exit 1 ;; esac
"$DEV" - "$WHEEL" "$RELEASE" <<'PY'
import sys, zipfile
wheel, release = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    metadata = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist: torch")]
assert requires == [f"Requires-Dist: torch=={release}.*"], requires
print(f"   {requires[0]}")
PY
VENV="$OUT/venv"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "== a venv with only torch==$TORCH"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q "torch==$TORCH" 2>&1 | grep -v "^WARNING: Location" || true
fi
# what a --no-build-isolation build from the sdist needs besides torch (pinned as in requirements.txt)
BUILD_TOOLS=($(grep -E "^(setuptools|wheel)==" requirements.txt))
"$VENV/bin/python" -m pip install --disable-pip-version-check -q "${BUILD_TOOLS[@]}" 2>&1 | grep -v "^WARNING: Location" || true
echo "== installing the wheel there (no index: the torch requirement must be met by what is installed)"
"$VENV/bin/python" -m pip uninstall --disable-pip-version-check -q -y quadnet 2>/dev/null || true
"$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-index "$WHEEL"
"$VENV/bin/python" -m pip check --disable-pip-version-check
smoke_test() {
  (cd "$(mktemp -d)" && "$VENV/bin/python" "$ROOT/scripts/wheel_smoke_test.py" "$ROOT" 2>&1 | grep -v "NumPy\|_conversion_method")
}
echo "== smoke test of the wheel, outside the source tree"
smoke_test
echo "== the C++ package in the wheel: the example app built against it"
WHEEL_CMAKE="$(cd /tmp && "$VENV/bin/python" -c 'import quadnet; print(quadnet.utils.cmake_prefix_path)')"
case "$WHEEL_CMAKE" in "$VENV"/*) ;; *) echo "cmake_prefix_path $WHEEL_CMAKE is not in $VENV"; exit 1 ;; esac
rm -rf "$OUT/app"
cmake -S examples/cpp -B "$OUT/app" -G Ninja -DCMAKE_PREFIX_PATH="$WHEEL_CMAKE" > "$OUT/app-configure.log" 2>&1 \
  || { cat "$OUT/app-configure.log"; exit 1; }
grep -E "^(quadnet|Torch)_DIR" "$OUT/app/CMakeCache.txt" | sed 's/^/   /'
# LibTorch found beside the wheel's quadnet, not the one the wheel was built against
grep -q "^Torch_DIR:PATH=$VENV/" "$OUT/app/CMakeCache.txt" || { echo "Torch not found in $VENV"; exit 1; }
cmake --build "$OUT/app" > "$OUT/app-build.log" || { cat "$OUT/app-build.log"; exit 1; }
LINKED="$(ldd "$OUT/app/quadnet_app" | grep -o '/[^ ]*libquadnet[^ ]*')"
echo "   quadnet_app links $LINKED"
case "$LINKED" in "$VENV"/*) ;; *) echo "the app does not link the wheel's libquadnet"; exit 1 ;; esac
echo "== the C++ interop tests with that app"
QUADNET_APP="$OUT/app/quadnet_app" "$DEV" -m pytest -q -p no:cacheprovider tests/python/test_cpp_interop.py

echo "== the sdist"
rm -rf "$OUT/sdist"
"$DEV" setup.py -q sdist -d "$OUT/sdist" > "$OUT/sdist.log" 2>&1 || { cat "$OUT/sdist.log"; exit 1; }
SDIST="$(ls "$OUT"/sdist/quadnet-*.tar.gz)"
echo "   $(basename "$SDIST")"
"$DEV" - "$SDIST" <<'PY'
import sys, tarfile
with tarfile.open(sys.argv[1]) as t:
    names = t.getnames()
    info = t.extractfile(next(n for n in names if n.endswith("/PKG-INFO"))).read().decode()
assert any(n.endswith("/csrc/sources.txt") for n in names) and any(n.endswith("/CMakeLists.txt") for n in names)
version = next(line for line in info.splitlines() if line.startswith("Version:"))
assert "+" not in version, version  # source for any torch
assert "Requires-Dist: torch>=2.6" in info, info
print(f"   {version}, Requires-Dist: torch>=2.6")
PY
echo "== installing the sdist into the venv with torch (compiles the extension there)"
# pip unpacks the sdist under /tmp: relative paths let ccache reuse the previous run's objects
(cd /tmp && CCACHE_BASEDIR=/tmp "$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-deps \
  --no-build-isolation --no-index --force-reinstall "$SDIST" > "$OUT/sdist-install.log" 2>&1) \
  || { tail -30 "$OUT/sdist-install.log"; exit 1; }
echo "== smoke test of the sdist's build"
smoke_test
echo "== the sdist in a venv without torch: refused, naming the fix"
EMPTY="$OUT/venv-without-torch"
if [ ! -x "$EMPTY/bin/python" ]; then
  python3 -m venv "$EMPTY"
  "$EMPTY/bin/python" -m pip install --disable-pip-version-check -q "${BUILD_TOOLS[@]}" 2>&1 | grep -v "^WARNING: Location" || true
fi
if "$EMPTY/bin/python" -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation --no-index \
    "$SDIST" > "$OUT/refused.log" 2>&1; then
  echo "the sdist built without torch"; exit 1
fi
grep -q "quadnet: building needs torch installed first" "$OUT/refused.log" || { cat "$OUT/refused.log"; exit 1; }
echo "   $(grep -o "quadnet: building needs torch installed first[^.]*" "$OUT/refused.log" | head -1)"
