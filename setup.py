"""Builds the quadnet Python package and its C++ extension (quadnet._C).

    pip install --no-build-isolation .        # or -e . for an editable install

The extension compiles the same C++ sources as the CMake library (CMakeLists.txt).
"""
import glob
import os
import re

from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def library_sources():
    """The C++ library's sources, read from CMakeLists.txt so the two builds never drift."""
    with open(os.path.join(ROOT, "CMakeLists.txt")) as f:
        block = re.search(r"set\(QUADNET_SOURCES(.*?)\)", f.read(), re.S).group(1)
    return block.split()


def version():
    with open(os.path.join(ROOT, "CMakeLists.txt")) as f:
        return re.search(r"project\(quadnet VERSION ([0-9.]+)", f.read()).group(1)


extension = CppExtension(
    name="quadnet._C",
    sources=library_sources() + ["csrc/python/bindings.cpp"],
    include_dirs=[os.path.join(ROOT, "csrc")],
    # torch 1.13 passes -std=c++14; the later flag wins.
    extra_compile_args=["-std=c++17", "-O2"],
)

setup(
    name="quadnet",
    version=version(),
    description="Quadratic layers, GLRAM projections and projection optimizers for PyTorch",
    package_dir={"": "python"},
    packages=find_packages("python"),
    ext_modules=[extension],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    python_requires=">=3.8",
    zip_safe=False,
)
