"""Every public name has an entry in the API reference (docs/reference/*.md), written by its public path
(`::: torch_input_ckpt.X` or `::: torch_input_ckpt.<public module>.X`), and every entry names a public name: moving
the internals never breaks the reference, and a new export cannot go undocumented. The README's links point at
files that exist (the site's own links are checked by `mkdocs build --strict`)."""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

import torch_input_ckpt

# The repository root, wherever this file sits under tests/.
ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
REFERENCE = ROOT / "docs" / "reference"
ENTRY = re.compile(r"^::: (torch_input_ckpt(?:\.\w+)+)\s*$", re.MULTILINE)
# The public entry modules besides the package itself. `testing` is public once it exists (issue 23): from then on
# its names need entries too.
PUBLIC_MODULES = ("lightning", "hf", "testing", "torchtitan")
REQUIRED_MODULES = ("lightning", "hf")


def public_modules() -> list[str]:
    found = [name for name in PUBLIC_MODULES if importlib.util.find_spec(f"torch_input_ckpt.{name}") is not None]
    assert set(REQUIRED_MODULES) <= set(found), f"public modules missing: {set(REQUIRED_MODULES) - set(found)}"
    return found


def public_names() -> set[str]:
    names = {f"torch_input_ckpt.{name}" for name in torch_input_ckpt.__all__}
    for module in public_modules():
        exported = getattr(importlib.import_module(f"torch_input_ckpt.{module}"), "__all__", None)
        assert exported, f"torch_input_ckpt.{module} declares no __all__"
        names |= {f"torch_input_ckpt.{module}.{name}" for name in exported}
    return names


def entries() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for page in sorted(REFERENCE.glob("*.md")):
        for target in ENTRY.findall(page.read_text()):
            out.setdefault(target, []).append(page.name)
    return out


def test_every_public_name_has_a_reference_entry():
    names = public_names()
    assert len(names) >= len(torch_input_ckpt.__all__) + 2, names
    missing = sorted(names - set(entries()))
    assert not missing, f"public names without a `::: <name>` entry in docs/reference/: {missing}"


def test_every_entry_is_a_public_name_documented_once():
    names = public_names()
    found = entries()
    not_public = sorted(set(found) - names)
    assert not not_public, f"reference entries that are not public names (use the public path): {not_public}"
    twice = {target: pages for target, pages in found.items() if len(pages) > 1}
    assert not twice, f"entries documented more than once: {twice}"


def test_the_readme_links_point_at_files_that_exist():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if "://" not in link]
    assert len(local) >= 10, "the README's feature table lost its links into the docs"
    broken = [link for link in local if not (ROOT / link).exists()]
    assert not broken, f"README links to files that do not exist: {broken}"
