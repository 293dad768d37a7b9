"""Builds the quadnet Python package and its C++ extension (quadnet._C).

    pip install torch==2.13.0                  # first: the extension builds against this torch
    pip install --no-build-isolation -e .      # or `.` for a regular install

The C++ library (csrc/sources.txt, read by CMakeLists.txt too) is built as quadnet/lib/libquadnet.so,
a plain shared library of LibTorch (no Python); the extension quadnet._C holds only the pybind11
bindings and links it (rpath $ORIGIN/lib). Beside them the package gets the public headers
(quadnet/include) and a CMake package (quadnet/share/cmake/quadnet), so a LibTorch app builds
against a pip-installed quadnet with CMAKE_PREFIX_PATH=quadnet.utils.cmake_prefix_path. Both are
compiled with the flags of the installed torch (C++20 for torch >= 2.10; quadnet's own code is C++17)
and CMake's Release optimisation level (-O3).
The torch it was built with is recorded in quadnet/_build_info.py, so that importing it under
another torch fails with a message naming both versions instead of a missing linker symbol.
"""
import glob
import os
import re
import shutil

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


LIBRARY = "quadnet.lib.libquadnet"  # built as quadnet/lib/libquadnet.so (BuildQuadnet.get_ext_filename)


def library_sources():
    """The C++ library's sources: csrc/sources.txt, which CMakeLists.txt reads too."""
    with open(os.path.join(ROOT, "csrc", "sources.txt")) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def headers():
    """Every header under csrc/quadnet: what the objects depend on."""
    return sorted(glob.glob(os.path.join("csrc", "quadnet", "**", "*.h"), root_dir=ROOT, recursive=True))


def public_headers():
    """The headers the C++ package ships: those of csrc/quadnet less the internals that CMakeLists.txt's
    install rule excludes (its `PATTERN "..." EXCLUDE` entries), so both packages hold the same set."""
    excluded = set(re.findall(r'PATTERN "([^"]+)" EXCLUDE', cmake_text()))
    return [h for h in headers() if os.path.basename(h) not in excluded]


def torch_release():
    """(major, minor) of the torch this build compiles against."""
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return major, minor


def building_sdist():
    """An sdist is source, for any torch: plain version, no torch pin (a build from it adds both)."""
    import sys
    return "sdist" in sys.argv


def base_version():
    """CMakeLists.txt's project version (0.1.0), the C++ package's version."""
    return re.search(r"project\(quadnet VERSION ([0-9.]+)", cmake_text()).group(1)


def version():
    """base_version() with a local tag naming the torch and accelerator built against
    (as pytorch_scatter's wheels: 0.1.0+pt213cpu, 0.1.0+pt213cu130): the extension's ABI is that
    torch's. An sdist has the plain version."""
    base = base_version()
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


class BuildQuadnet(BuildExtension):
    """torch's BuildExtension, plus quadnet's C++ package: libquadnet.so built as a library of LibTorch
    (not a Python module), quadnet._C linked against it, and the public headers and CMake package
    copied beside it into the package (build_lib, and the source tree for an in-place/editable build)."""

    def run(self):
        check_torch_headers()
        write_build_info()
        super().run()
        self.write_cpp_package(os.path.join(self.build_lib, "quadnet"))
        if self.inplace:
            self.write_cpp_package(os.path.join(ROOT, "python", "quadnet"))

    def get_ext_filename(self, fullname):
        # a library's name, not a module's (no Python ABI tag); distutils asks with the full
        # name and with the last component
        *package, name = fullname.split(".")
        if name == LIBRARY.split(".")[-1]:
            return os.path.join(*package, "libquadnet.so")
        return super().get_ext_filename(fullname)

    def copy_extensions_to_source(self):  # (in-place builds) setuptools does not make the library's directory
        package = ".".join(LIBRARY.split(".")[:-1])
        os.makedirs(self.get_finalized_command("build_py").get_package_dir(package), exist_ok=True)
        super().copy_extensions_to_source()

    def build_extension(self, ext):
        if ext.name == LIBRARY:
            # BuildExtension defines these for a pybind11 module; with them torch/torch.h pulls in
            # torch/extension.h (Python, pybind11), which a LibTorch app cannot link.
            ext.extra_compile_args = [flag for flag in ext.extra_compile_args if not flag.startswith(
                ("-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME="))]
        else:  # quadnet._C links the library just built (extensions build in list order)
            ext.library_dirs = ext.library_dirs + [os.path.dirname(self.get_ext_fullpath(LIBRARY))]
        super().build_extension(ext)

    def write_cpp_package(self, package):
        include = os.path.join(package, "include")
        shutil.rmtree(include, ignore_errors=True)  # no header removed from csrc lingers
        for header in public_headers():
            target = os.path.join(include, os.path.relpath(header, "csrc"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(os.path.join(ROOT, header), target)
        config = os.path.join(package, "share", "cmake", "quadnet")
        os.makedirs(config, exist_ok=True)
        base = base_version()
        values = {"VERSION": base, "VERSION_MAJOR_MINOR": ".".join(base.split(".")[:2]),
                  "TORCH_CMAKE_PREFIX_PATH": torch.utils.cmake_prefix_path}
        for name in ("quadnetConfig.cmake", "quadnetConfigVersion.cmake"):
            with open(os.path.join(ROOT, "cmake", "python_package", name + ".in")) as f:
                text = f.read()
            for key, value in values.items():
                text = text.replace(f"@{key}@", value)
            with open(os.path.join(config, name), "w") as f:
                f.write(text)


# Recorded before any command runs, so that build_py (which copies the package before build_ext
# compiles) puts it into wheels built from an sdist too; an sdist itself holds none.
if not building_sdist():
    write_build_info()


library = CppExtension(
    name=LIBRARY,
    sources=library_sources(),
    include_dirs=[os.path.join(ROOT, "csrc")],
    depends=headers(),
    extra_compile_args=["-O3"],  # as CMake's Release build (Python's own CFLAGS may say -O2)
    # found by its soname; LibTorch beside quadnet in site-packages, for apps that do not load it first
    extra_link_args=["-Wl,-soname,libquadnet.so", "-Wl,-rpath,$ORIGIN/../../torch/lib"],
)
library.libraries.remove("torch_python")  # a LibTorch library: no Python in it
extension = CppExtension(
    name="quadnet._C",
    sources=["csrc/python/bindings.cpp"],
    include_dirs=[os.path.join(ROOT, "csrc")],
    depends=headers(),
    libraries=["quadnet"],
    extra_compile_args=["-O3"],
    extra_link_args=["-Wl,-rpath,$ORIGIN/lib"],
)

setup(
    name="quadnet",
    version=version(),
    install_requires=install_requires(),
    package_dir={"": "python"},
    packages=find_packages("python"),
    ext_modules=[library, extension],  # in this order: _C links the library
    cmdclass={"build_ext": BuildQuadnet.with_options(use_ninja=True)},
    zip_safe=False,
)
