"""Builds the quadnet Python package and its C++ extension (quadnet._C).

    pip install torch==2.13.0                  # first: the extension builds against this torch
    pip install --no-build-isolation -e .      # or `.` for a regular install

The extension compiles the same C++ sources as the CMake library (csrc/sources.txt, read by both),
with the compiler flags of the installed torch (C++20 for torch >= 2.10; quadnet's own code is
C++17) and CMake's Release optimisation level (-O3).
The torch it was built with is recorded in quadnet/_build_info.py, so that importing it under
another torch fails with a message naming both versions instead of a missing linker symbol.
"""
import os
import re

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, include_paths
except ImportError as error:  # e.g. pip install without torch, or with build isolation
    raise RuntimeError(
        f"quadnet: building needs torch installed first ({error}). The extension compiles against the "
        "torch it will run with: pip install torch==2.13.0 (the CPU wheel, or the build you use), then "
        "pip install --no-build-isolation quadnet (a checkout, an sdist or a wheel build), so that pip does "
        "not build against a torch of its own in an isolated environment.") from None

ROOT = os.path.dirname(os.path.abspath(__file__))


def cmake_text():
    with open(os.path.join(ROOT, "CMakeLists.txt")) as f:
        return f.read()


def library_sources():
    """The C++ library's sources: csrc/sources.txt, which CMakeLists.txt reads too."""
    with open(os.path.join(ROOT, "csrc", "sources.txt")) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def torch_release():
    """(major, minor) of the torch this build compiles against."""
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return major, minor


def building_sdist():
    """An sdist is source, for any torch: plain version, no torch pin (a build from it adds both)."""
    import sys
    return "sdist" in sys.argv


def version():
    """CMakeLists.txt's version with a local tag naming the torch and accelerator built against
    (as pytorch_scatter's wheels: 0.1.0+pt213cpu, 0.1.0+pt213cu130): the extension's ABI is that
    torch's. An sdist has the plain version."""
    base = re.search(r"project\(quadnet VERSION ([0-9.]+)", cmake_text()).group(1)
    if building_sdist():
        return base
    accelerator = "cu" + torch.version.cuda.replace(".", "") if torch.version.cuda else "cpu"
    return f"{base}+pt{''.join(torch_release())}{accelerator}"


def install_requires():
    """The torch release built against (any patch version: the ABI is the minor release's); for an
    sdist, the oldest torch the code supports (the build then pins the one it compiles against)."""
    if building_sdist():
        return ["torch>=2.6"]
    return [f"torch=={'.'.join(torch_release())}.*"]


def check_torch_headers():
    header = os.path.join(include_paths()[0], "torch", "extension.h")
    if not os.path.exists(header):
        raise RuntimeError(
            f"quadnet: torch {torch.__version__} at {os.path.dirname(torch.__file__)} has no C++ headers "
            f"({header} is missing), so the extension cannot be built against it. Install a torch that "
            "ships them, e.g. the PyPI wheel: pip install torch==2.13.0, then build again with "
            "pip install --no-build-isolation -e .")


def write_build_info():
    with open(os.path.join(ROOT, "python", "quadnet", "_build_info.py"), "w") as f:
        f.write('"""Written by setup.py when quadnet._C is built: the torch it was built against."""\n')
        f.write(f"TORCH_VERSION = {torch.__version__!r}\n")
        f.write(f"VERSION = {version()!r}\n")


class BuildExtensionRecordingTorch(BuildExtension):
    def run(self):
        check_torch_headers()
        write_build_info()
        super().run()


# Recorded before any command runs, so that build_py (which copies the package before build_ext
# compiles) puts it into wheels built from an sdist too; an sdist itself holds none.
if not building_sdist():
    write_build_info()


extension = CppExtension(
    name="quadnet._C",
    sources=library_sources() + ["csrc/python/bindings.cpp"],
    include_dirs=[os.path.join(ROOT, "csrc")],
    extra_compile_args=["-O3"],  # as CMake's Release build (Python's own CFLAGS may say -O2)
)

setup(
    name="quadnet",
    version=version(),
    install_requires=install_requires(),
    package_dir={"": "python"},
    packages=find_packages("python"),
    ext_modules=[extension],
    cmdclass={"build_ext": BuildExtensionRecordingTorch.with_options(use_ninja=True)},
    zip_safe=False,
)
