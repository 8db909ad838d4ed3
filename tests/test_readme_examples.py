"""The quick starts are files in examples/: the README's quick-start block is examples/quickstart.py (compared text
for text), and the docs pages include the mixture and stream quick starts (`--8<--`, so the page block is the file
when the site is built). The mixture and stream quick starts are run twice here, each run a fresh process: the
second resumes from the checkpoint file the first wrote. The first runs in this process (tests/support/examples.py), the
resume in a fresh process."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import pytest

from tests.support.examples import run_fresh, run_here

# The repository root, wherever this file sits under tests/.
ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
EXAMPLES = ("mixture_quickstart.py", "stream_quickstart.py")


def introduced_block(text: str, name: str) -> str:
    """The ```python block that follows the line introducing ``examples/<name>`` as "this block is that file"."""
    at = text.index(f"`examples/{name}` (this block is that file")
    start = text.index("```python\n", at) + len("```python\n")
    return text[start : text.index("\n```\n", start) + 1]


def docs_pages_introducing(name: str) -> list[Path]:
    marker = f"`examples/{name}` (this block is that file"
    return [page for page in sorted((ROOT / "docs").rglob("*.md")) if marker in page.read_text()]


def test_the_readme_quick_start_is_the_example_file():
    readme = (ROOT / "README.md").read_text()
    assert introduced_block(readme, "quickstart.py") == (ROOT / "examples" / "quickstart.py").read_text()


@pytest.mark.parametrize("name", EXAMPLES)
def test_the_docs_block_is_the_example_file(name):
    pages = docs_pages_introducing(name)
    assert len(pages) == 1, f"examples/{name} should be introduced on exactly one docs page, found {pages}"
    # The block is the include line alone, so the built page shows the file as it is (check_paths fails the build
    # if it is missing).
    assert introduced_block(pages[0].read_text(), name) == f'--8<-- "examples/{name}"\n'
    assert (ROOT / "examples" / name).is_file()


def largest_remainder(weights: list[int], total: int) -> list[int]:
    """Hamilton's method, written here as the oracle (the mixture documents it so): each weight gets
    floor(w * total / sum), the rest go one each to the largest remainders, ties to the earlier source."""
    whole = sum(weights)
    counts = [w * total // whole for w in weights]
    by_remainder = sorted(range(len(weights)), key=lambda k: (-(weights[k] * total % whole), k))
    for k in by_remainder[: total - sum(counts)]:
        counts[k] += 1
    return counts


def literals(lines: list[str]) -> list[object]:
    """Printed Python literals, line by line (other lines as text)."""
    out: list[object] = []
    for line in lines:
        try:
            out.append(ast.literal_eval(line))
        except (ValueError, SyntaxError):
            out.append(line)
    return out


def run_first(capfd: pytest.CaptureFixture[str], name: str, *args: object) -> list[object]:
    """An example's first run, in this process; its printed literals."""
    capfd.readouterr()
    run_here(name, *args)
    return literals(capfd.readouterr().out.splitlines())


def run(name: str, *args: object) -> list[object]:
    """Run an example in a fresh process; its printed Python literals, line by line (other lines as text)."""
    return literals(run_fresh(name, *args, timeout=180)[0])


def source_epochs(name: str, items: list[str], length: int) -> None:
    """One source's deliveries in order are consecutive permutations of its ``length`` items (the last partial):
    nothing duplicated, nothing unknown, nothing missing from a whole source epoch, checked separately."""
    for start in range(0, len(items), length):
        chunk = [int(s.removeprefix(name)) for s in items[start : start + length]]
        counts = Counter(chunk)
        assert not [i for i, n in counts.items() if n > 1], f"{name} source epoch {start // length}: duplicated"
        assert all(0 <= i < length for i in counts), f"{name}: unknown items"
        if len(chunk) == length:
            assert set(chunk) == set(range(length)), f"{name} source epoch {start // length}: missing"


@pytest.mark.slow
def test_mixture_quickstart_resumes_from_the_file_in_a_fresh_process(tmp_path, capfd):
    directory = tmp_path / "ckpt"
    counts, first, second = run_first(capfd, "mixture_quickstart.py", directory)
    assert counts == {"web": 67, "code": 19, "math": 9}
    _, rest, uninterrupted, rest2, last = run("mixture_quickstart.py", directory)
    head = first + second
    # The same mixture: the identical stream (the state came back from canonical JSON, sorted keys).
    assert head + rest == uninterrupted, "the resumed epoch differs from the uninterrupted one"
    # New weights from the same file: the rest of the epoch follows them over what was left of it, and each source
    # continues from its own cursor, exactly once per source epoch.
    weights = {"web": 5, "code": 3, "math": 2}
    left = len(uninterrupted) - len(head)
    expected = dict(zip(weights, largest_remainder(list(weights.values()), left), strict=True))
    assert len(rest2) == left and last.startswith(f"{left} ")
    assert {name: sum(s.startswith(name) for s in rest2) for name in weights} == expected
    lengths = {"web": 70, "code": 20, "math": 5}
    for name, length in lengths.items():
        source_epochs(name, [s for s in head + rest2 if s.startswith(name)], length)


@pytest.mark.slow
def test_stream_quickstart_resumes_from_the_file_in_a_fresh_process_with_workers(tmp_path, capfd):
    indexed, first, second = run_first(capfd, "stream_quickstart.py", tmp_path)
    assert str(indexed).startswith("indexed 4 shards, 16 samples, 57 tokens")
    rest, uninterrupted = run("stream_quickstart.py", tmp_path)
    assert [first, second, *rest] == uninterrupted, "the resumed epoch differs from the uninterrupted one"
    ids = [s for batch in uninterrupted for s in batch]
    shards = {0: 5, 2: 3, 3: 8}
    assert sorted(ids) == sorted(f"{s}-{k}" for s, n in shards.items() for k in range(n)), "not exactly once"
