"""Sphinx configuration of quadnet's documentation (built offline: no intersphinx, no MathJax)."""
import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "python"))

project = "quadnet"
author = "the quadnet developers"
with open(os.path.join(ROOT, "CMakeLists.txt")) as cmake:
    release = next(line.split("VERSION")[1].split()[0] for line in cmake if line.startswith("project("))
version = release

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon"]
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# Every cross-reference inside quadnet must resolve (the test command builds with -n -W).
# Names outside it (torch, typing, builtins) are not documented here: there is no network to
# fetch their inventories from, so they are exempt.
nitpicky = True
nitpick_ignore_regex = [(r"py:.*", r"(torch|typing|collections|weakref)(\..*)?"),
                        (r"py:.*", r"(Tensor|Module|Optimizer|Parameter|Sequential|Linear|NamedTuple)"),
                        (r"py:.*", r"(int|float|bool|str|dict|list|tuple|None)"),
                        (r"py:.*", r"(Callable|Iterable|Optional|Union|Sequence)"),
                        (r"py:.*", r"(optional|callable)"),
                        # private bases (the conv layers' shared geometry) are not documented
                        (r"py:class", r"quadnet(\.\w+)*\._\w+")]

exclude_patterns = ["_build"]
html_theme = "alabaster"
html_theme_options = {"nosidebar": False}
html_static_path = []


# A public object of quadnet without a docstring fails the build (warnings are errors in the
# test command). Overrides of torch.nn.Module / torch.optim.Optimizer methods (forward, step,
# extra_repr, ...) keep the base class's contract and are not listed; data attributes are
# described in their class's "Attributes" section.

import torch  # noqa: E402
from sphinx.util import logging as sphinx_logging  # noqa: E402

_logger = sphinx_logging.getLogger("quadnet.docs")
_BASES = (torch.nn.Module, torch.optim.Optimizer)


def _overrides_torch_method(name):
    return any(hasattr(base, name) for base in _BASES)


def _skip_member(app, what, name, obj, skip, options):
    if name.startswith("_"):
        return True
    if what == "class" and (_overrides_torch_method(name) or not callable(obj) and not isinstance(obj, property)):
        return True
    return None


def _require_docstring(app, what, name, obj, options, lines):
    if what == "module" or not name.startswith("quadnet."):
        return
    if not any(line.strip() for line in lines):
        _logger.warning(f"quadnet docs: {what} {name} has no docstring", type="quadnet", subtype="docstring")


def setup(app):
    app.connect("autodoc-skip-member", _skip_member)
    app.connect("autodoc-process-docstring", _require_docstring)
