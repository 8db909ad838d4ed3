"""The design page's package map is the package: its folders in the order tests/test_code_shape.py's LAYERS
has them, each folder's modules (named, counted, in import order) and the folders each imports, computed from
the same import graph the code-shape test checks. A module added, moved or importing a new folder fails here
until the page says so."""

from __future__ import annotations

import re
from pathlib import Path

from tests.test_code_shape import GRAPH, LAYERS, NAMES

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
PAGE = ROOT / "docs" / "concepts" / "design.md"
HEADER = "| folder | modules | what each module is, in import order | imports from |"
ROOT_ROW = "root entry modules"
MODULE = re.compile(r"\*\*`([\w.]+)`\*\*")  # a module named in the "what each is" cell
CODE = re.compile(r"`([^`]+)`")


def _top(name: str) -> str:
    return name.split(".")[0]


def folder_modules(folder: str) -> dict[str, str]:
    """The modules of a folder (``errors``: the root module; ROOT_ROW: the other root modules), by the name the
    page gives them (dotted inside the folder), mapped to their dotted name in the package. A folder's own
    ``__init__`` is not counted."""
    if folder == "errors":
        return {"errors": "errors"}
    if folder == ROOT_ROW:
        return {name: name for name in NAMES if "." not in name and name not in LAYERS}
    return {name.split(".", 1)[1]: name for name in NAMES if _top(name) == folder and "." in name}


def imported_folders(folder: str) -> set[str]:
    found: set[str] = set()
    own_init = [folder] if folder in NAMES and folder != "errors" else []  # _compat/__init__.py's imports count
    for module in [*folder_modules(folder).values(), *own_init]:
        found |= {_top(name) if _top(name) in LAYERS else name for name in GRAPH[module]}
    return found - {folder}


def table() -> list[tuple[str, int, list[str], list[str]]]:
    """The package map's rows: (folder, count, modules in the page's order, folders imported)."""
    lines = PAGE.read_text().splitlines()
    assert HEADER in lines, f"{PAGE.name} lost its package map ({HEADER!r})"
    rows = []
    for line in lines[lines.index(HEADER) + 2 :]:
        if not line.startswith("|"):
            break
        folder, count, what, imports = (cell.strip() for cell in line.strip().strip("|").split(" | "))
        name = ROOT_ROW if folder == ROOT_ROW else CODE.findall(folder)[0].removesuffix("/").removesuffix(".py")
        rows.append((name, int(count), MODULE.findall(what), CODE.findall(imports)))
    return rows


def test_the_folders_are_listed_in_layer_order():
    assert [row[0] for row in table()] == [*LAYERS, ROOT_ROW]


def test_the_arrow_line_is_the_layer_order():
    arrows = [line for line in PAGE.read_text().splitlines() if line.startswith("errors -> ")]
    assert arrows == [" -> ".join(LAYERS)], "the page's import direction is not tests/test_code_shape.py's LAYERS"


def test_each_folder_names_and_counts_its_modules():
    wrong = []
    for folder, count, listed, _ in table():
        actual = folder_modules(folder)
        if sorted(listed) != sorted(actual) or count != len(actual):
            wrong.append(
                f"{folder}: the page lists {count} {sorted(listed)}, the package has {len(actual)} {sorted(actual)}"
            )
    assert not wrong, "\n".join(wrong)
    total = sum(row[1] for row in table())
    assert total == len([n for n in NAMES if n not in LAYERS]) + 1, "a module is in no row"  # + errors


def test_modules_are_listed_in_import_order():
    late = []
    for folder, _, listed, _ in table():
        modules = folder_modules(folder)
        for i, name in enumerate(listed):
            after = {modules[later] for later in listed[i + 1 :] if later in modules}
            if name in modules and GRAPH[modules[name]] & after:
                late.append(f"{folder}: {name} imports {sorted(GRAPH[modules[name]] & after)}, listed after it")
    assert not late, late


def test_each_folder_lists_the_folders_it_imports_lowest_first():
    order = [*LAYERS]
    wrong = []
    for folder, _, _, imports in table():
        actual = sorted(imported_folders(folder), key=lambda f: order.index(f) if f in order else len(order))
        if imports != actual:
            wrong.append(f"{folder}: the page says it imports {imports}, it imports {actual}")
    assert not wrong, "\n".join(wrong)
