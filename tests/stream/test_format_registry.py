"""The shard-format extension point: a format is one class and one registry entry (docs/concepts/writing-a-format.md).

A toy format defined here (``.csv`` lines ``id,token token ...``), registered by one entry in
``formats.registry.FORMATS`` (monkeypatched: the tests leave the registry as they found it), is then counted
by ``index``, named in its messages and help, read by ``ShardedStream`` beside a built-in format, and
streamed exactly once per epoch through ``ResumableDataLoader`` with stops whose states round-trip through
the checkpoint file, as the built-in formats are (tests/test_stream.py). The docs page's code is this file's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from torch_input_ckpt import InputStateError, ResumableDataLoader, ShardedStream
from torch_input_ckpt.__main__ import main
from torch_input_ckpt.stream.formats import (
    LINE_CHARS_ENV,
    MAX_LINE_CHARS,
    RandomAccess,
    ShardFormat,
    bound,
    count_samples,
    format_of,
    open_regular,
    open_samples,
    random_access,
    registry,
    suffix_list,
)
from torch_input_ckpt.stream.shards import write_index

from tests.support.resume import check_exactly_once, epochs_of, resume_chain

# -- the toy format (docs/concepts/writing-a-format.md includes the code between the --8<-- markers) ---------------


# --8<-- [start:format]
class CsvLines:
    """A toy shard format: one sample per non-blank line ``id,token token ...``, as ``{"id", "tokens"}``."""

    name = "CSV lines"
    suffixes = (".csv",)
    counted_from_header = False  # count() reads every line: a directory of .csv shards needs `index`

    def count(self, path: str) -> int:
        return sum(1 for _ in self.open(path, 0))

    def open(self, path: str, start: int) -> Iterator[dict[str, Any]]:
        return _csv_samples(path, start)

    def random_access(self, path: str) -> None:
        return None  # read forward only: the stream keeps the last `window` samples of each open shard

    def tokens(self, path: str) -> None:
        return None  # the tokens are a field: `index DIR --tokens tokens` counts them


CSV = CsvLines()


def _csv_samples(path: str, start: int) -> Iterator[dict[str, Any]]:
    limit = bound(LINE_CHARS_ENV, MAX_LINE_CHARS)  # the line bound JSON lines use, and its variable
    with open_regular(path) as file:  # a FIFO or a device is refused, by kind, before any read
        number = sample = 0
        while line := file.readline(limit + 1):
            number += 1
            if len(line) > limit:
                raise InputStateError(f"{path}: line {number} is longer than the bound of {limit} bytes")
            if line.strip():
                if sample >= start:  # the lines before `start` are skipped, not decoded
                    yield _csv_sample(path, number, line)
                sample += 1


def _csv_sample(path: str, number: int, line: bytes) -> dict[str, Any]:
    try:
        key, comma, ids = line.decode("utf-8").strip().partition(",")
        if not comma:
            raise ValueError("no comma")
        return {"id": key, "tokens": [int(token) for token in ids.split()]}
    except ValueError as error:  # UnicodeDecodeError is a ValueError too
        raise InputStateError(f"{path}: line {number}: expected 'id,token token ...' ({error})") from None


# --8<-- [end:format]


# --8<-- [start:register]
@pytest.fixture
def csv_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    # The one entry a new format adds to formats/registry.py, made here for the test's duration only.
    monkeypatch.setattr(registry, "FORMATS", (*registry.FORMATS, CSV))


# --8<-- [end:register]


# -- data: CSV shards (one empty) beside a JSON lines shard -----------------------------------------------------

SIZES = (5, 0, 8, 3, 6)  # the last shard is JSON lines
LENGTH = sum(SIZES)
# Shard s's file name: not in the order of s (the index and the stream take files in name order).
NAMES = ("web.csv", "code.csv", "math.csv", "news.csv", "books.jsonl")


def token_ids(shard: int, k: int) -> list[int]:
    return [1000 * shard + 10 * k + j for j in range(1 + (shard + 2 * k) % 4)]


def write_shards(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    *csv_sizes, jsonl_size = SIZES
    for shard, size in enumerate(csv_sizes):
        lines = [f"{shard}-{k},{' '.join(map(str, token_ids(shard, k)))}\n" for k in range(size)]
        (root / NAMES[shard]).write_text("\n".join(lines))  # blank lines between samples: skipped
    shard = len(csv_sizes)
    records = [{"id": f"{shard}-{k}", "tokens": token_ids(shard, k)} for k in range(jsonl_size)]
    (root / NAMES[shard]).write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def all_ids() -> list[str]:
    return [f"{s}-{k}" for s, n in enumerate(SIZES) for k in range(n)]


# -- the registry ----------------------------------------------------------------------------------------------


def test_every_registered_format_is_a_shard_format_and_the_suffixes_derive_from_the_registry():
    assert all(isinstance(form, ShardFormat) for form in registry.FORMATS)
    assert isinstance(CSV, ShardFormat)
    assert registry.suffixes() == (".jsonl", ".jsonl.gz", ".npy", ".tar", ".parquet", ".arrow")
    assert suffix_list() == ".jsonl, .jsonl.gz, .npy, .tar, .parquet or .arrow"
    names = ("a.JSONL", "a.jsonl.gz", "a.npy", "a.tar", "a.Parquet", "a.arrow")
    assert [format_of(name).name for name in names] == [
        "JSON lines",
        "JSON lines",
        ".npy array",
        "webdataset tar",
        "Parquet",
        "Arrow IPC",
    ]
    assert format_of("a.csv") is None and format_of("a.tar.gz") is None


def test_the_fuzz_test_holds_every_registered_format_to_the_contract():
    from tests.stream.test_readers_fuzz import VALID  # valid shards of each suffix, which the fuzz test damages

    assert set(VALID) == set(registry.suffixes()), "add a generator of valid shards to test_readers_fuzz.VALID"


def test_the_longest_suffix_wins_whatever_the_registry_order(monkeypatch):
    gz = CsvLines()
    gz.suffixes = (".gz",)
    monkeypatch.setattr(registry, "FORMATS", (gz, *registry.FORMATS))
    assert format_of("a.gz") is gz
    assert format_of("a.jsonl.gz").name == "JSON lines"


def test_without_its_registry_entry_a_csv_file_is_no_shard(tmp_path):
    root = write_shards(tmp_path / "data")
    (root / "books.jsonl").unlink()
    known = ".jsonl, .jsonl.gz, .npy, .tar, .parquet or .arrow"
    with pytest.raises(ValueError, match=re.escape(f"no shard files (names ending in {known})")):
        write_index(root)
    with pytest.raises(ValueError, match=r"a\.csv: not a shard of a known format .*'\.parquet', '\.arrow'\)\)$"):
        count_samples(root / "a.csv")


def test_one_registry_entry_makes_csv_known_to_index_its_messages_and_help(csv_registered, tmp_path, capsys):
    assert format_of("x.CSV") is CSV
    assert suffix_list() == ".jsonl, .jsonl.gz, .npy, .tar, .parquet, .arrow or .csv"
    assert main(["index", "--help"]) == 0
    assert ".parquet, .arrow or .csv" in " ".join(capsys.readouterr().out.split())
    empty = tmp_path / "empty"
    empty.mkdir()
    known = ".jsonl, .jsonl.gz, .npy, .tar, .parquet, .arrow or .csv"
    with pytest.raises(ValueError, match=re.escape(f"(names ending in {known})")):
        write_index(empty)
    root = write_shards(tmp_path / "data")
    assert main(["index", str(root), "--tokens", "tokens"]) == 0
    tokens = sum(len(token_ids(s, k)) for s, n in enumerate(SIZES) for k in range(n))
    assert f"indexed 5 shards, {LENGTH} samples, {tokens} tokens" in capsys.readouterr().out
    index = json.loads((root / "torch_input_ckpt_index.json").read_text())
    assert [(e["name"], e["count"]) for e in index["shards"]] == sorted(zip(NAMES, SIZES, strict=True))


def test_a_registered_format_refuses_a_damaged_shard_naming_file_and_line(csv_registered, tmp_path, capsys):
    root = write_shards(tmp_path / "data")
    (root / "math.csv").write_text("2-0,1 2\n2-1,1 x\n")
    with pytest.raises(InputStateError, match=r"math\.csv: line 2: expected 'id,token token \.\.\.' \(invalid"):
        count_samples(root / "math.csv")
    assert main(["index", str(root)]) == 2
    assert "math.csv: line 2: expected 'id,token token ...'" in capsys.readouterr().err


# -- streamed exactly once, resumed through the checkpoint file ----------------------------------------------


def loader_factory(root: Path, pack_to: int | None, num_workers: int = 0):
    def make() -> ResumableDataLoader:
        stream = ShardedStream(root, lanes=2, seed=5, window=3, pack_to=pack_to, tokens="tokens" if pack_to else None)
        collate = packed if pack_to else (lambda samples: [s["id"] for s in samples])
        return ResumableDataLoader(stream, batch_size=2, collate_fn=collate, seed=7, num_workers=num_workers)

    return make


def packed(samples: list[dict[str, Any]]) -> list[tuple[list[int], list[int]]]:
    return [(s["document_ids"].tolist(), s["input_ids"].tolist()) for s in samples]


# --8<-- [start:stream]
@pytest.mark.parametrize("pack_to", [None, 4])
def test_a_registered_format_streams_exactly_once_and_resumes_through_the_checkpoint_file(
    csv_registered, tmp_path, pack_to
):
    root = write_shards(tmp_path / "data")
    write_index(root, "tokens" if pack_to else None)
    make = loader_factory(root, pack_to)
    expected = list(epochs_of(make(), 2))
    per_epoch = -(-len(make().dataset) // 2)
    # Stops at the start, mid-window, mid-epoch, at the epoch's end and in the next epoch; each state goes
    # through the checkpoint file's encoding and reading (resume.roundtrip) into a fresh loader, which reads
    # with 2 workers (forked: they inherit the registry entry).
    stops = [0, 1, 4, per_epoch, per_epoch + 3]
    stream, _ = resume_chain(make, stops, 2, resume_with=loader_factory(root, pack_to, num_workers=2))
    assert stream == expected
    if pack_to is None:
        check_exactly_once(stream, lambda ids: [all_ids().index(i) for i in ids], LENGTH)
        return
    # A packed sequence's document ids number the samples in the stream's shard order: by file name.
    in_name_order = [(s, k) for s in sorted(range(len(NAMES)), key=NAMES.__getitem__) for k in range(SIZES[s])]
    documents = {i: token_ids(s, k) for i, (s, k) in enumerate(in_name_order)}
    for epoch in (0, 1):
        got: dict[int, list[int]] = {}
        for _, batch in (item for item in stream if item[0] == epoch):
            for document_ids, input_ids in batch:
                for d, t in zip(document_ids, input_ids, strict=True):
                    if d >= 0:
                        got.setdefault(d, []).append(t)
        assert {d: sorted(t) for d, t in got.items()} == documents, f"epoch {epoch}: tokens not exactly once"


# --8<-- [end:stream]


# -- the built-in random access gives what a read from sample k gives ---------------------------------------


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.int64).reshape(4, 3),
        np.arange(5, dtype=">i4"),
        np.arange(12, dtype=np.int16).reshape(3, 2, 2),
    ],
    ids=["2-D", "1-D big-endian", "3-D"],
)
def test_npy_random_access_gives_the_samples_a_read_from_k_gives(tmp_path, array):
    path = str(tmp_path / "rows.npy")
    np.save(path, array)
    access = random_access(path)
    assert isinstance(access, RandomAccess) and len(access) == len(array) == count_samples(path)
    for k in range(len(array)):
        first = next(open_samples(path, k))
        assert first.dtype.isnative and np.array_equal(access.sample(k), first)
    batch = access.samples([2, 0, 1])
    assert all(np.array_equal(got, next(open_samples(path, k))) for got, k in zip(batch, [2, 0, 1], strict=True))
    rows = access.token_rows()
    assert (rows is not None) == (array.ndim == 2)
    assert registry.format_of(path).tokens(path) == array.size


def test_a_format_read_forward_only_has_no_random_access_and_no_own_token_count(tmp_path):
    root = write_shards(tmp_path / "data")
    path = str(root / "books.jsonl")
    assert random_access(path) is None and format_of(path).tokens(path) is None
    assert random_access(("a", "description", "of", "the", "user's")) is None


# -- the docs page shows this code ---------------------------------------------------------------------------

INCLUDE = re.compile(r'^--8<-- "([^":]+):(\w+)"$', re.MULTILINE)


def _repository() -> Path:
    here = Path(__file__).resolve()
    return next(parent for parent in here.parents if (parent / "pyproject.toml").is_file())


def test_the_docs_page_includes_its_code_from_this_test_and_the_registry():
    root = _repository()
    page = (root / "docs" / "concepts" / "writing-a-format.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.DOTALL)
    assert len(blocks) == 4 and all(INCLUDE.fullmatch(block.strip()) for block in blocks), (
        "every code block on the page is included from a tested file, none written into it"
    )
    included = INCLUDE.findall(page)
    assert {section for _, section in included} >= {"format", "register", "registry", "stream"}
    for path, section in included:
        text = (root / path).read_text(encoding="utf-8")
        start, end = f"# --8<-- [start:{section}]\n", f"# --8<-- [end:{section}]\n"
        assert start in text and end in text.split(start, 1)[1], f"{path} has no section {section!r}"
    this = Path(__file__).resolve().relative_to(root).as_posix()
    assert {path for path, _ in included} == {this, "torch_input_ckpt/stream/formats/registry.py"}
