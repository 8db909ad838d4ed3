"""The exactly-once tables are the contract: every row names the tests that prove it through the checkpoint file,
and every test named exists. The tables live on the docs pages (docs/guides/mixtures.md, docs/guides/streams.md);
each must be found on exactly one page of docs/ or the README."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

# The repository root, wherever this file sits under tests/.
ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
# The header of each contract table, as its page spells it.
TABLES = ("| situation | what happens | guarantee | proved through the file by |", "| `ShardedStream` resumed with |")
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def table_rows(header: str) -> list[str]:
    found = [(page, page.read_text().splitlines()) for page in pages()]
    found = [(page, lines) for page, lines in found if any(line.startswith(header) for line in lines)]
    assert len(found) == 1, f"the table {header!r} should be on exactly one page, found on {[str(p) for p, _ in found]}"
    lines = found[0][1]
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


@pytest.mark.parametrize("header", TABLES)
def test_every_row_names_tests_that_exist(header):
    rows = table_rows(header)
    assert len(rows) >= 4, f"the table {header!r} lost its rows"
    missing = []
    for row in rows:
        cells = row.strip("|").split(" | ")
        references = REFERENCE.findall(cells[-1])
        assert references, f"this row names no test (`tests/<file>.py::<test>`): {row[:100]}"
        for file, name in references:
            path = ROOT / file
            if not path.is_file() or name not in defined_tests(path):
                missing.append(f"{file}::{name}")
    assert not missing, f"the contract table names tests that do not exist: {missing}"
