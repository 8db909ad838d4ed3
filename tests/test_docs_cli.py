"""The CLI reference (docs/reference/cli.md) documents every command of `python -m torch_input_ckpt --help` in a
section of its own, and every option and positional argument of each command's `--help` in that section: read from
the real `--help` output, so a new command or option cannot go undocumented."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

# The repository root, wherever this file sits under tests/.
ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
PAGE = ROOT / "docs" / "reference" / "cli.md"


@cache  # each call starts Python and imports torch: once per command
def help_text(*command: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "torch_input_ckpt", *command, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="200"),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def commands() -> list[str]:
    """The commands listed under `COMMAND` in the program's help."""
    lines = help_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip() == "COMMAND")
    found = []
    for line in lines[at + 1 :]:
        if not line.startswith("    "):
            break
        if not line.startswith("      "):  # a command's first line, not the continuation of its help
            found.append(line.split()[0])
    return found


def section(name: str) -> str:
    """The text of the page's `## name` section."""
    text = PAGE.read_text()
    match = re.search(rf"^## {re.escape(name)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"docs/reference/cli.md has no section `## {name}`"
    return match.group(1)


def arguments(help_output: str) -> tuple[set[str], set[str]]:
    """The options (`--json`) and the positional arguments (`directory`) of a command's help."""
    options = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", help_output)) - {"--help"}
    positionals: set[str] = set()
    lines = help_output.splitlines()
    if "positional arguments:" in lines:
        for line in lines[lines.index("positional arguments:") + 1 :]:
            if not line.strip():
                break
            if line.startswith("  ") and not line.startswith("    "):
                positionals.add(line.split()[0])
    return options, positionals


def test_the_program_lists_the_commands():
    assert commands() == ["inspect", "samples", "report", "index"]


@pytest.mark.parametrize("command", ["inspect", "samples", "report", "index"])
def test_every_option_of_the_command_is_documented(command):
    assert command in commands(), f"{command} is no longer a command: update docs/reference/cli.md and this test"
    options, positionals = arguments(help_text(command))
    assert positionals, f"{command}: no positional argument found in its --help"
    text = section(command)
    assert f"usage: torch-input-ckpt {command}" in text, f"the section of {command} shows no usage line"
    missing = sorted(name for name in options | positionals if f"`{name}" not in text)
    assert not missing, f"`{command}` arguments not documented in docs/reference/cli.md: {missing}"


def test_every_command_has_a_section_and_an_exit_status_row():
    exit_status = section("Exit status")
    for command in commands():
        section(command)
        assert f"| `{command} DIR" in exit_status, f"no exit-status row for {command}"
