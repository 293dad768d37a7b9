"""The C++ package inside the Python package (setup.py): libquadnet.so, which quadnet._C links, the
public headers and a CMake config at quadnet.utils.cmake_prefix_path. scripts/test_wheel.sh builds
the example app against a pip-installed wheel's package and runs the C++ interop tests with it."""
import os
import pathlib
import re
import subprocess

import quadnet

ROOT = pathlib.Path(__file__).resolve().parents[2]


def dynamic_section(path):
    return subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout


def needed(path):
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic_section(path))


def test_the_extension_links_the_packaged_library():
    library = pathlib.Path(quadnet.utils.library_path)
    assert library.is_file() and library.parent.parent == pathlib.Path(quadnet.__file__).parent
    assert "libquadnet.so" in needed(quadnet._C.__file__)
    assert "$ORIGIN/lib" in dynamic_section(quadnet._C.__file__)  # found beside _C, wherever installed
    assert re.search(r"\(SONAME\)\s+Library soname: \[libquadnet.so\]", dynamic_section(library))
    # the library the extension loads is the packaged one
    with open(f"/proc/{os.getpid()}/maps") as f:
        assert str(library.resolve()) in f.read()


def test_the_library_is_a_libtorch_library_without_python():
    """A LibTorch app links it: no libtorch_python or libpython, no Python or pybind11 symbol."""
    library = quadnet.utils.library_path
    assert not [name for name in needed(library) if "python" in name], needed(library)
    undefined = subprocess.run(["nm", "-D", "--undefined-only", library], capture_output=True, text=True,
                               check=True).stdout.split()
    assert not [s for s in undefined if s.startswith(("Py", "_Py")) or "pybind11" in s]
    defined = subprocess.run(["nm", "-DC", "--defined-only", library], capture_output=True, text=True,
                             check=True).stdout
    assert "quadnet::nn::QuadraticLayerImpl::forward" in defined  # the C++ API, not only the ops


def test_the_package_holds_the_headers_that_cmake_installs():
    """One set of public headers in both C++ packages (build/install, made by scripts/setup.sh, and
    the Python package's), the internals in neither."""
    packaged = pathlib.Path(quadnet.utils.include_path) / "quadnet"
    installed = ROOT / "build" / "install" / "include" / "quadnet"
    names = {str(p.relative_to(packaged)) for p in packaged.rglob("*.h")}
    assert names == {str(p.relative_to(installed)) for p in installed.rglob("*.h")}
    assert "quadnet.h" in names and not [n for n in names if n.endswith(("detail.h", "solvers.h"))]
    for name in names:  # copies of the sources
        assert (packaged / name).read_bytes() == (ROOT / "csrc" / "quadnet" / name).read_bytes(), (
            f"{packaged / name} differs from its source: rebuild (setup.py build_ext --inplace)")


def test_the_cmake_config_names_the_package_version():
    config = pathlib.Path(quadnet.utils.cmake_prefix_path) / "quadnet"
    version = (config / "quadnetConfigVersion.cmake").read_text()
    assert f'set(PACKAGE_VERSION "{quadnet.__version__.split("+")[0]}")' in version
    for text in (version, (config / "quadnetConfig.cmake").read_text()):
        assert "@" not in text  # every placeholder substituted


def configure(tmp_path, find_package):
    """Configures a CMake project that calls `find_package` with only quadnet's prefix path."""
    (tmp_path / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.18)\nproject(app LANGUAGES CXX)\n" + find_package + "\n"
        'get_target_property(location quadnet::quadnet IMPORTED_LOCATION)\n'
        'get_target_property(features quadnet::quadnet INTERFACE_COMPILE_FEATURES)\n'
        'message(STATUS "quadnet ${quadnet_VERSION} at ${location} (${features}), "\n'
        '  "Torch ${Torch_VERSION} at ${Torch_DIR}")\n')
    return subprocess.run(["cmake", "-S", str(tmp_path), "-B", str(tmp_path / "build"),
                           f"-DCMAKE_PREFIX_PATH={quadnet.utils.cmake_prefix_path}"],
                          capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                                               if k not in ("CMAKE_PREFIX_PATH", "Torch_DIR")})


def test_find_package_gives_the_library_and_the_torch_beside_it(tmp_path):
    import torch
    base = quadnet.__version__.split("+")[0]
    done = configure(tmp_path, f"find_package(quadnet {base} REQUIRED)")
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.search(r"quadnet (\S+) at (\S+) \((\S+)\), Torch (\S+) at (\S+)", done.stdout)
    assert found, done.stdout
    version, location, features, torch_version, torch_dir = found.groups()
    assert version == base and pathlib.Path(location) == pathlib.Path(quadnet.utils.library_path)
    assert features == "cxx_std_20"  # LibTorch >= 2.10 headers need C++20
    assert torch_version == torch.__version__.split("+")[0]
    assert pathlib.Path(torch_dir).resolve() == (pathlib.Path(torch.utils.cmake_prefix_path) / "Torch").resolve()


def test_find_package_refuses_another_minor_release(tmp_path):
    major, minor = quadnet.__version__.split("+")[0].split(".")[:2]
    done = configure(tmp_path, f"find_package(quadnet {major}.{int(minor) + 1} REQUIRED)")
    base = quadnet.__version__.split("+")[0]
    assert done.returncode != 0 and "considered but not accepted" in done.stderr and f"version: {base}" in done.stderr
