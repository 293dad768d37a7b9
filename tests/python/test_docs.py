"""The documentation in docs/: it builds warning-free (broken cross-references and public
objects without docstrings are errors, see docs/conf.py), and the code's references into it
resolve. No reference may point outside the repository."""
import os
import re
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SOURCE_DIRS = ["csrc", "python", "tests", "examples", "benchmarks", "scripts", "docs"]
SOURCE_SUFFIXES = (".py", ".h", ".cpp", ".rst", ".md", ".sh", ".txt", ".cmake", ".in")


def _sources():
    paths = [os.path.join(ROOT, name) for name in ("README.md", "CONTRIBUTING.md", "CMakeLists.txt", "setup.py")]
    for top in SOURCE_DIRS:
        for directory, dirs, files in os.walk(os.path.join(ROOT, top)):
            dirs[:] = [d for d in dirs if d not in ("_build", "__pycache__")]
            paths += [os.path.join(directory, f) for f in files if f.endswith(SOURCE_SUFFIXES)]
    return [p for p in paths if os.path.isfile(p)]


def test_sphinx_build_is_warning_free(tmp_path):
    result = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-b", "html",
                             os.path.join(ROOT, "docs"), str(tmp_path / "html")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "html" / "glram.html").is_file()


def test_references_into_docs_resolve():
    pages = set(os.listdir(os.path.join(ROOT, "docs")))
    referenced = set()
    for path in _sources():
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for page in re.findall(r"docs/([a-z_]+\.rst)", text):
            assert page in pages, f"{os.path.relpath(path, ROOT)} refers to docs/{page}, which does not exist"
            referenced.add(page)
    assert {"quadratic_layer.rst", "polynomial.rst", "glram.rst", "end_to_end.rst"} <= referenced


def test_no_reference_points_outside_the_repository():
    outside = re.compile(r"DESIGN §|DESIGN\.md|\.\./shared|seeds? 00\d")
    for path in _sources():
        if os.path.abspath(path) == os.path.abspath(__file__):
            continue
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                assert not outside.search(line), f"{os.path.relpath(path, ROOT)}:{number}: {line.strip()}"


def test_the_one_source_list_holds_every_library_source():
    """csrc/sources.txt (read by CMake and setup.py) lists every .cpp of the library, each once."""
    with open(os.path.join(ROOT, "csrc", "sources.txt")) as f:
        listed = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    found = sorted(os.path.relpath(os.path.join(d, name), ROOT)
                   for d, _, files in os.walk(os.path.join(ROOT, "csrc", "quadnet")) for name in files
                   if name.endswith(".cpp"))
    assert sorted(listed) == found and len(set(listed)) == len(listed)


def _expand_braces(path):
    match = re.search(r"\{([^}]*)\}", path)
    if not match:
        return [path]
    return [expanded for choice in match.group(1).split(",")
            for expanded in _expand_braces(path[:match.start()] + choice + path[match.end():])]


def test_the_layout_tables_name_files_that_exist():
    """Every source path the layout tables name (README, CONTRIBUTING, docs/code.rst) is in the tree:
    relative to the repository, csrc/quadnet, csrc/quadnet/ops (code.rst's ops table) or python/quadnet."""
    bases = [ROOT] + [os.path.join(ROOT, *d) for d in (("csrc", "quadnet"), ("csrc", "quadnet", "ops"),
                                                       ("python", "quadnet"))]
    path_like = re.compile(r"^[\w./{},*-]+(\.(h|cpp|py|rst|txt|in|\{[\w,]+\})|/)$")
    checked = 0
    for name in ("README.md", "CONTRIBUTING.md", os.path.join("docs", "code.rst")):
        with open(os.path.join(ROOT, name), encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if name.endswith(".md") and not line.startswith("|"):
                    continue
                for token in re.findall(r"``([^`]+)``" if name.endswith(".rst") else r"`([^`]+)`", line):
                    if not path_like.match(token) or "*" in token:
                        continue
                    for path in _expand_braces(token):
                        assert any(os.path.exists(os.path.join(base, path)) for base in bases), \
                            f"{name}:{number} names {path}, which is not in the tree"
                        checked += 1
    assert checked > 40, checked
