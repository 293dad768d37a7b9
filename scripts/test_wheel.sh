#!/usr/bin/env bash
# The wheel, as a user installs it (CI runs this after the test command):
#   1. built against the development venv's torch: pip wheel --no-build-isolation (scripts/setup.sh
#      first); its version names that torch (0.1.0+pt213cpu) and it requires that release
#      (Requires-Dist: torch==2.13.*);
#   2. installed, without an index, into a separate venv that holds only that torch (build/wheel/venv,
#      kept between runs; the wheel is reinstalled every time);
#   3. used from outside the source tree: import, forward, backward, a GLRAMSGD step, export.
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
echo "== installing the wheel there (no index: the torch requirement must be met by what is installed)"
"$VENV/bin/python" -m pip uninstall --disable-pip-version-check -q -y quadnet 2>/dev/null || true
"$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-index "$WHEEL"
"$VENV/bin/python" -m pip check --disable-pip-version-check
echo "== smoke test outside the source tree"
cd "$(mktemp -d)"
"$VENV/bin/python" - "$ROOT" <<'PY'
import os, sys
import torch
import quadnet
root = sys.argv[1]
source = os.path.join(root, "python") + os.sep
assert not os.path.abspath(quadnet.__file__).startswith(source), quadnet.__file__  # the installed package
torch.manual_seed(0)
model = torch.nn.Sequential(quadnet.nn.QuadraticLayer(8, 4, rank=3), torch.nn.Linear(4, 2))
opt = quadnet.optim.GLRAMSGD(model, lr=0.05, momentum=0.9)
x = torch.randn(16, 8)
loss = model(x).pow(2).mean()
loss.backward()
opt.step()
W = model[0].weight
torch.testing.assert_close(W @ W.T, torch.eye(3), rtol=0, atol=1e-5)
program = torch.export.export(model.eval(), (x,))
assert any("quadnet.quadratic_form" in str(n.target) for n in program.graph.nodes)
torch.testing.assert_close(program.module()(x), model(x))
assert "+pt" in quadnet.__version__, quadnet.__version__  # the wheel's version, torch tag included
print(f"   quadnet {quadnet.__version__} from {os.path.dirname(quadnet.__file__)}: "
      f"forward, backward, GLRAMSGD step, export OK (loss {loss.item():.4f})")
PY
