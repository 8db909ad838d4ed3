"""The docs name no file or module that does not exist: every repository path (``tests/...py``,
``store/files.py``), every bare ``name.py``, every ``torch_input_ckpt.a.b`` and every package-relative
``store.files.MAX_FILE_BYTES`` on the pages and in the README resolves, so a move or a rename cannot leave a
page pointing at the old place. Paths in the package's own docstrings and comments are held to the same rule."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
PACKAGE = ROOT / "torch_input_ckpt"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# Where a path with a folder may point: the repository's own top folders, or the package's folders.
TOP = {"tests", "examples", "benchmarks", "docs", ".ci", "torch_input_ckpt"}
FOLDERS = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
PATH = re.compile(r"(?<![\w./-])((?:\.ci|[A-Za-z_]\w*)(?:/[\w.-]+)*/\w+\.py)\b")
BARE = re.compile(r"`(\w+\.py)(?::\w+)?`")  # a file name alone, in code: `mixture_layout.py`
DOTTED = re.compile(r"(?<![\w\"'.])(torch_input_ckpt(?:\.\w+)+)")
# In code: a package-relative dotted name ending in a constant (`store.files.MAX_FILE_BYTES`) or naming a
# folder's module (`order.cursor.epoch_request`).
RELATIVE = re.compile(r"`(\w+(?:\.\w+)+)(?:\([^`]*\))?`")
CONSTANT = re.compile(r"^[A-Z][A-Z0-9_]+$")


def module_file(dotted: list[str]) -> Path | None:
    """The file of the package module named by ``dotted`` (parts after ``torch_input_ckpt``), if one."""
    base = PACKAGE.joinpath(*dotted)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@cache
def bound_names(path: Path) -> frozenset[str]:
    """Names a module binds at its top level (definitions, assignments, imports)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for target in targets for t in ast.walk(target) if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    return frozenset(names)


def resolves(dotted: list[str]) -> bool:
    """A module of the package, or a name bound at the top level of one (``a.b.NAME``)."""
    if not dotted or module_file(dotted) is not None:
        return True
    path = module_file(dotted[:-1]) if len(dotted) > 1 else module_file([])
    return path is not None and dotted[-1] in bound_names(path)


def longest_module(dotted: list[str]) -> int:
    return max(i for i in range(len(dotted) + 1) if module_file(dotted[:i]) is not None)


def stale_paths(text: str) -> list[str]:
    found = []
    for path in PATH.findall(text):
        first = path.split("/")[0]
        if first in TOP:
            ok = (ROOT / path).is_file()
        elif first in FOLDERS:
            ok = (PACKAGE / path).is_file()
        else:
            continue  # another project's file (torch/utils/data/dataloader.py)
        if not ok:
            found.append(path)
    return found


@cache
def repository_files() -> frozenset[str]:
    places = [PACKAGE, ROOT / "tests", ROOT / "examples", ROOT / "benchmarks", ROOT / ".ci"]
    return frozenset(p.name for place in places for p in place.rglob("*.py")) | {p.name for p in ROOT.glob("*.py")}


def stale_names(text: str) -> list[str]:
    found = [name for name in BARE.findall(text) if name not in repository_files()]
    for name in DOTTED.findall(text):
        dotted = name.split(".")[1:]
        # A module, then at most an attribute of it (a method or field after that is not checked).
        if not resolves(dotted[: longest_module(dotted) + 1]):
            found.append(name)
    for name in RELATIVE.findall(text):
        dotted = name.split(".")
        names_a_module = dotted[0] in FOLDERS and module_file(dotted[:2]) is not None and len(dotted) > 2
        if names_a_module or CONSTANT.match(dotted[-1]):
            if not resolves(dotted[: longest_module(dotted) + 1]) or longest_module(dotted) == 0:
                found.append(name)
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_page_names_only_paths_and_modules_that_exist(page):
    text = page.read_text()
    stale = stale_paths(text) + stale_names(text)
    assert not stale, f"{page.relative_to(ROOT)} names what does not exist (moved? renamed?): {sorted(set(stale))}"


def test_the_package_docstrings_name_only_paths_that_exist():
    stale = [
        f"{p.relative_to(ROOT)}: {path}" for p in sorted(PACKAGE.rglob("*.py")) for path in stale_paths(p.read_text())
    ]
    assert not stale, stale


def test_the_checks_catch_the_old_flat_names():
    # The rules must see the references a move leaves behind, and pass what is current.
    old = "`mixture_layout.py`, `files.MAX_FILE_BYTES`, `torch_input_ckpt.shards.write_index`, tests/test_stream.py"
    assert sorted(stale_paths(old) + stale_names(old)) == [
        "files.MAX_FILE_BYTES",
        "mixture_layout.py",
        "tests/test_stream.py",
        "torch_input_ckpt.shards.write_index",
    ]
    new = "`mixture/layout.py`, `store.files.MAX_FILE_BYTES`, `torch_input_ckpt.stream.shards.write_index`"
    new += ", `loader.epoch` (a variable), torch/utils/data/dataloader.py (another project's file)"
    assert stale_paths(new) + stale_names(new) == []
