"""The package's shape, checked: short functions, bounded complexity, one-way imports, private stays private."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from radon.complexity import cc_visit

PACKAGE = Path(__file__).resolve().parent.parent / "torch_input_ckpt"
MODULES = sorted(PACKAGE.glob("*.py"))
MAX_LINES = 60
MAX_COMPLEXITY = 15


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _local_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found


def test_no_function_is_longer_than_60_lines():
    long = [
        f"{path.name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in MODULES
        for node in ast.walk(_tree(path))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > MAX_LINES  # type: ignore[operator]
    ]
    assert not long, long


def test_no_function_is_above_cyclomatic_complexity_15():
    # radon counts boolean operators too (ruff's C901, in `make lint`, does not): the stricter measure.
    complex_ = [
        f"{path.name}:{block.lineno} {block.fullname} ({block.complexity})"
        for path in MODULES
        for block in cc_visit(path.read_text(encoding="utf-8"))
        if block.complexity > MAX_COMPLEXITY
    ]
    assert not complex_, complex_


def test_imports_between_modules_have_no_cycle():
    graph = {path.stem: _local_imports(path) & {p.stem for p in MODULES} for path in MODULES}
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> None:
        if state.get(module) == "done":
            return
        if state.get(module) == "open":
            pytest.fail("import cycle: " + " -> ".join([*trail[trail.index(module) :], module]))
        state[module] = "open"
        for imported in sorted(graph[module]):
            visit(imported, [*trail, module])
        state[module] = "done"

    for module in graph:
        visit(module, [])


@pytest.mark.parametrize("module,forbidden", [("checkpointer", {"loader", "sampler", "inspection", "lightning"})])
def test_the_restore_path_does_not_import_the_loader_or_the_cli(module, forbidden):
    assert not _local_imports(PACKAGE / f"{module}.py") & forbidden


def test_no_module_touches_another_objects_private_attributes():
    """``x._name`` only on ``self``/``cls``/``super()``; third-party internals only in ``_compat``."""
    touches = []
    for path in MODULES:
        if path.name == "_compat.py":
            continue
        for node in ast.walk(_tree(path)):
            if not isinstance(node, ast.Attribute) or not node.attr.startswith("_") or node.attr.startswith("__"):
                continue
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super":
                continue
            touches.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
    assert not touches, touches
