"""Where the C++ package inside the installed quadnet lies, for LibTorch apps.

The quadnet Python package (a wheel, ``pip install .`` or the editable development install)
holds the C++ library that its extension links, the public headers and a CMake package::

    cmake -S app -B build -DCMAKE_PREFIX_PATH="$(python -c 'import quadnet; print(quadnet.utils.cmake_prefix_path)')"

then ``find_package(quadnet)`` gives ``quadnet::quadnet`` (as ``torch.utils.cmake_prefix_path``
gives LibTorch, which quadnet's config finds beside quadnet in the same environment).
"""
import os

_PACKAGE = os.path.dirname(os.path.abspath(__file__))

#: The directory to put on ``CMAKE_PREFIX_PATH``: it holds ``quadnet/quadnetConfig.cmake``.
cmake_prefix_path = os.path.join(_PACKAGE, "share", "cmake")
#: The C++ library (``libquadnet.so``): the ops, modules and optimizers that ``quadnet._C`` binds.
library_path = os.path.join(_PACKAGE, "lib", "libquadnet.so")
#: The directory of the public headers (``#include <quadnet/quadnet.h>``).
include_path = os.path.join(_PACKAGE, "include")
