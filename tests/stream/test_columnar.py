"""Parquet and Arrow IPC shards: counted from metadata, read from a row group or record batch on, and streamed with
every property the other formats have, each for both formats: exact resume through the checkpoint file (into a
loader with another num_workers), exactly once per epoch (missing, duplicated and unknown checked apart), packing
with token counts from a column, another world size (2 -> 3 ranks, in process), a rewritten or appended shard
refused by name, a shard with fewer rows than recorded refused, and columns selected.

Shards are real files written by pyarrow (Arrow in the IPC *stream* format that Hugging Face ``datasets`` writes,
and one in the IPC *file* format); their names are not in shard order.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from torch_input_ckpt import InputStateError, ResumableDataLoader, ResumableSampler, Shard, ShardedStream
from torch_input_ckpt.__main__ import main
from torch_input_ckpt.stream.formats import count_samples, format_of, open_samples, random_access
from torch_input_ckpt.stream.shards import build_index, write_index

from tests.support.resume import check_exactly_once, epochs_of, resume_chain, roundtrip

# Shard s holds SIZES[s] rows; its file name is NAMES[s] (not in the order of s: the index takes name order).
SIZES = (7, 0, 11, 4)
NAMES = ("web", "code", "math", "books")
GROUP = 3  # rows per row group / record batch: every shard but the empty one has several
SCHEMA = pa.schema([("id", pa.string()), ("tokens", pa.list_(pa.int32())), ("text", pa.string())])


def record(shard: int, k: int) -> dict[str, Any]:
    return {
        "id": f"{shard}-{k}",
        "tokens": [1000 * shard + 10 * k + j for j in range(1 + (shard + 2 * k) % 5)],
        "text": f"row {k} of {NAMES[shard]}",
    }


def write_table(path: Path, rows: list[dict[str, Any]], ipc_file: bool = False) -> None:
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    if path.suffix == ".parquet":
        pq.write_table(table, path, row_group_size=GROUP)
        return
    new = pa.ipc.new_file if ipc_file else pa.ipc.new_stream
    with new(path, SCHEMA) as writer:
        for batch in table.to_batches(max_chunksize=GROUP):
            writer.write_batch(batch)


def write_shards(root: Path, suffix: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for shard, size in enumerate(SIZES):
        # The last Arrow shard in the IPC file format (with a footer), the others as datasets writes them.
        write_table(root / f"{NAMES[shard]}{suffix}", [record(shard, k) for k in range(size)], ipc_file=shard == 3)
    return root


def sample_number(ids: list[str]) -> list[int]:
    """A sample's number in the stream's shard order (shard files by name)."""
    order = sorted(range(len(NAMES)), key=NAMES.__getitem__)
    base, offset = {}, 0
    for s in order:
        base[s], offset = offset, offset + SIZES[s]
    return [base[int(i.split("-")[0])] + int(i.split("-")[1]) for i in ids]


@pytest.fixture(params=[".parquet", ".arrow"], ids=["parquet", "arrow"])
def suffix(request: pytest.FixtureRequest) -> str:
    return request.param


# -- the format: counts from metadata, reads from a group on, random access -------------------------------------


def test_counts_reads_from_k_and_random_access_agree(tmp_path, suffix):
    root = write_shards(tmp_path / "d", suffix)
    for shard, size in enumerate(SIZES):
        path = str(root / f"{NAMES[shard]}{suffix}")
        rows = [record(shard, k) for k in range(size)]
        assert count_samples(path) == size and format_of(path).counted_from_header
        access = random_access(path)
        assert len(access) == size
        assert [access.sample(k) for k in range(size)] == rows
        for k in {0, GROUP - 1, GROUP, size - 1, size} - {-1}:  # a group's last row, the next group's first, the end
            assert list(open_samples(path, k)) == rows[k:]
        ks = [k for k in (5, 0, 1, 2, 9, 3) if k < size]
        assert access.samples(ks) == [rows[k] for k in ks]
        assert list(open_samples(path, 1, columns=["id"]))[:1] == [{"id": r["id"]} for r in rows[1:2]]
        assert format_of(path).field_tokens(path, "tokens") == sum(len(r["tokens"]) for r in rows)


def test_a_read_from_a_later_row_group_does_not_read_the_earlier_ones(tmp_path):
    path = tmp_path / "web.parquet"
    write_table(path, [record(0, k) for k in range(9)])
    chunk = pq.ParquetFile(path).metadata.row_group(0).column(2)  # row group 0's text column, its pages
    data = bytearray(path.read_bytes())
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data[start : start + chunk.total_compressed_size] = bytes(chunk.total_compressed_size)  # zeroed
    path.write_bytes(bytes(data))
    assert count_samples(path) == 9  # the footer alone
    assert list(open_samples(path, 3)) == [record(0, k) for k in range(3, 9)]  # row groups 1 and 2 only
    assert random_access(str(path)).samples([8, 4]) == [record(0, 8), record(0, 4)]
    with pytest.raises(InputStateError, match=r"web\.parquet: not a readable Parquet file \(row group 0\)"):
        list(open_samples(path, 0))


def test_index_command_counts_from_metadata_and_tokens_from_a_column(tmp_path, capsys, suffix):
    root = write_shards(tmp_path / "d", suffix)
    (root / "notes.json").write_text("{}")  # as save_to_disk's state.json: not a shard
    assert main(["index", str(root), "--tokens", "tokens"]) == 0
    total = sum(len(record(s, k)["tokens"]) for s, n in enumerate(SIZES) for k in range(n))
    assert f"indexed 4 shards, {sum(SIZES)} samples, {total} tokens" in capsys.readouterr().out
    entries = build_index(root, "tokens")["shards"]
    named = sorted((f"{n}{suffix}", s) for n, s in zip(NAMES, SIZES, strict=True))
    assert [(e["name"], e["count"]) for e in entries] == named
    (root / "web.parquet").write_bytes(b"PAR1 not parquet")
    (root / "code.arrow").write_bytes(b"not arrow at all")
    assert main(["index", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert ("code.arrow: not a readable Arrow IPC" in err) or ("web.parquet: not a readable Parquet file" in err)


def test_damage_is_refused_by_name(tmp_path, suffix):
    path = tmp_path / f"web{suffix}"
    write_table(path, [record(0, k) for k in range(7)])
    cut = tmp_path / f"cut{suffix}"
    data = path.read_bytes()
    cut.write_bytes(data[:-8])  # an Arrow stream without its end marker; a Parquet file without its footer
    with pytest.raises(InputStateError, match=rf"cut\{suffix}: "):
        count_samples(cut)
    with pytest.raises(InputStateError, match=r"no column 'body'; the file has columns \['id', 'tokens', 'text'\]"):
        list(open_samples(path, 0, columns=["body"]))
    fifo = tmp_path / f"pipe{suffix}"
    os.mkfifo(fifo)
    with pytest.raises(InputStateError, match="shard is a FIFO"):
        count_samples(fifo)


def test_a_missing_pyarrow_is_an_error_naming_the_file_and_the_extra(tmp_path, monkeypatch, capsys):
    path = tmp_path / "web.parquet"
    write_table(path, [record(0, 0)])
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` raises ImportError, as when absent
    with pytest.raises(ModuleNotFoundError, match=r"web\.parquet: reading Parquet file needs pyarrow.*\[data\]"):
        count_samples(path)
    assert main(["index", str(tmp_path)]) == 2
    assert "needs pyarrow" in capsys.readouterr().err


# -- streamed exactly once, resumed through the checkpoint file ------------------------------------------------


def loader_factory(root: Path, pack_to: int | None, num_workers: int = 0, columns: list[str] | None = None):
    def make() -> ResumableDataLoader:
        stream = ShardedStream(
            root, lanes=2, seed=3, window=4, pack_to=pack_to, tokens="tokens" if pack_to else None, columns=columns
        )
        collate = packed if pack_to else (lambda samples: [s["id"] for s in samples])
        return ResumableDataLoader(stream, batch_size=3, collate_fn=collate, seed=7, num_workers=num_workers)

    return make


def packed(samples: list[dict[str, Any]]) -> list[tuple[list[int], list[int]]]:
    return [(s["document_ids"].tolist(), s["input_ids"].tolist()) for s in samples]


@pytest.mark.parametrize("pack_to", [None, 5], ids=["samples", "packed"])
def test_streams_exactly_once_and_resumes_through_the_checkpoint_file(tmp_path, suffix, pack_to):
    root = write_shards(tmp_path / "d", suffix)
    write_index(root, "tokens" if pack_to else None)
    columns = ["tokens"] if pack_to else ["id"]  # only what the run reads
    make = loader_factory(root, pack_to, columns=columns)
    expected = list(epochs_of(make(), 2))
    per_epoch = len(make())
    stops = [1, per_epoch, per_epoch + 2]  # mid-window, the epoch's end, the next epoch
    # Resumed with 2 workers (unpacked) or into a fresh loader with none (packed: the worker change is the same code).
    again = loader_factory(root, pack_to, num_workers=0 if pack_to else 2, columns=columns)
    stream, _ = resume_chain(make, stops, 2, resume_with=again)
    assert stream == expected
    if pack_to is None:
        check_exactly_once(stream, sample_number, sum(SIZES))
        return
    documents = {sample_number([f"{s}-{k}"])[0]: record(s, k)["tokens"] for s, n in enumerate(SIZES) for k in range(n)}
    for epoch in (0, 1):
        got: dict[int, list[int]] = {}
        for _, batch in (item for item in stream if item[0] == epoch):
            for document_ids, input_ids in batch:
                for d, t in zip(document_ids, input_ids, strict=True):
                    if d >= 0:
                        got.setdefault(d, []).append(t)
        assert not set(got) - set(documents), f"epoch {epoch}: tokens of unknown documents"
        # The window shuffles packed sequences: the pieces of a document cut between two may come in either order.
        got_sorted = {d: sorted(t) for d, t in got.items()}
        assert got_sorted == {d: t for d, t in documents.items() if t}, f"epoch {epoch}: tokens not exactly once"


def world_order(root: Path, world: int, state: dict[str, Any] | None, steps: int | None = None):
    """The ranks of one world in lockstep, in this process: the global order and rank 0's state."""
    loaders = []
    for rank in range(world):
        stream = ShardedStream(root, lanes=2, seed=3, window=4)
        sampler = ResumableSampler(stream, num_replicas=world, rank=rank)
        one = ResumableDataLoader(stream, batch_size=2, sampler=sampler, collate_fn=lambda b: [s["id"] for s in b])
        if state is not None:
            one.load_state_dict(state)
        loaders.append(one)
    iterators = [iter(one) for one in loaders]
    order, taken = [], 0
    while steps is None or taken < steps:
        batches = [next(it, None) for it in iterators]
        if batches[0] is None:
            break
        order.extend(b[i] for i in range(len(batches[0])) for b in batches)
        taken += 1
    return order, roundtrip(loaders[0].state_dict())


def test_another_world_size_continues_the_global_order_exactly_once(tmp_path, suffix):
    root = write_shards(tmp_path / "d", suffix)
    write_index(root)
    single, _ = world_order(root, 1, None)
    head, state = world_order(root, 2, None, steps=2)
    tail, _ = world_order(root, 3, state)
    assert head == single[: len(head)]
    rest = tail[: len(single) - len(head)]
    assert rest == single[len(head) :], "the 3 ranks continue the global order"
    assert sorted(head + rest) == sorted(single) and len(set(single)) == sum(SIZES)
    assert set(tail[len(rest) :]) <= set(single), "past the end only DistributedSampler's padding repeats"


# -- changed data ---------------------------------------------------------------------------------------------


def test_a_rewritten_or_appended_shard_is_refused_by_name(tmp_path, suffix):
    root = write_shards(tmp_path / "d", suffix)
    write_index(root)
    ShardedStream(root)
    victim = root / f"math{suffix}"
    write_table(victim, [record(2, k) for k in range(SIZES[2] + 2)])  # two rows appended
    with pytest.raises(InputStateError, match=rf"math\{suffix}: shard changed since it was indexed"):
        ShardedStream(root)
    # Paths without an index are counted from their metadata: a resume over a rewritten file is refused.
    bare = write_shards(tmp_path / "bare", suffix)
    paths = [bare / f"{n}{suffix}" for n in ("web", "math")]
    first = ResumableDataLoader(ShardedStream(paths, columns=["id"]), batch_size=2)
    next(iter(first))
    state = roundtrip(first.state_dict())
    write_table(bare / f"math{suffix}", [record(2, k) for k in range(SIZES[2] + 1)])
    with pytest.raises(InputStateError, match="fingerprint"):
        ResumableDataLoader(ShardedStream(paths, columns=["id"]), batch_size=2).load_state_dict(state)


def test_a_shard_with_fewer_rows_than_recorded_is_refused_naming_it(tmp_path, suffix):
    root = write_shards(tmp_path / "d", suffix)
    path = os.fspath(root / f"math{suffix}")
    stream = ShardedStream([Shard(path, SIZES[2] + 3)], shuffle=False)
    with pytest.raises(InputStateError, match=rf"math\{suffix}: shard holds 11 samples but its recorded count is 14"):
        stream[0]


def test_columns_are_checked_when_the_stream_is_built(tmp_path, suffix):
    root = write_shards(tmp_path / "d", suffix)
    write_index(root, "tokens")
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "news.jsonl").write_text('{"id": 1}\n')
    with pytest.raises(ValueError, match=r"news\.jsonl: columns= selects columns of Parquet and Arrow shards"):
        ShardedStream([Shard(os.fspath(tmp_path / "j" / "news.jsonl"), 1)], columns=["id"])
    with pytest.raises(ValueError, match="leaves out tokens='tokens'"):
        ShardedStream(root, pack_to=4, tokens="tokens", columns=["id"])
    with pytest.raises(ValueError, match="distinct non-empty"):
        ShardedStream(root, columns=["id", "id"])
    assert ShardedStream(root, columns=["text"], shuffle=False)[0] == {"text": record(3, 0)["text"]}  # books: first


def test_a_group_past_the_member_bound_is_refused_before_it_is_decoded(tmp_path, suffix, monkeypatch):
    path = tmp_path / f"web{suffix}"
    write_table(path, [record(0, k) for k in range(7)])
    assert count_samples(path) == 7  # counting reads metadata only: no group is decoded
    monkeypatch.setenv("TORCH_INPUT_CKPT_MAX_MEMBER_BYTES", "50")
    unit = "row group" if suffix == ".parquet" else "record batch"
    with pytest.raises(InputStateError, match=rf"web\{suffix}: {unit} 0 holds \d+ bytes decoded, more than the bound"):
        list(open_samples(path, 0))
