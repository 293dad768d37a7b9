"""The style the tree keeps, checked by the test command: ruff (configured in pyproject.toml:
pycodestyle errors and warnings, pyflakes, import order; 120 columns) over all Python code, and
clang-format (.clang-format: Google's style, 120 columns; scripts/setup.sh installs Debian's) over all
C++ code. `clang-format -i $(git ls-files '*.h' '*.cpp')` applies it."""
import os
import shutil
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def test_ruff_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", ROOT],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def cpp_sources():
    listed = subprocess.run(["git", "ls-files", "*.h", "*.cpp"], capture_output=True, text=True, cwd=ROOT, check=True)
    return listed.stdout.split()


def test_clang_format_finds_nothing():
    clang_format = shutil.which("clang-format")
    assert clang_format, "clang-format is missing: scripts/setup.sh installs it (Debian's clang-format)"
    sources = cpp_sources()
    assert "csrc/quadnet/ops/quadratic_form.cpp" in sources and "tests/cpp/test_glram.cpp" in sources
    result = subprocess.run([clang_format, "--dry-run", "--Werror", *sources], capture_output=True, text=True,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
