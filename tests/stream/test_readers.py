"""A shard that holds fewer samples than its recorded count is an error naming it, never an early end of the epoch.

torch's DataLoader takes a ``StopIteration`` out of a fetch for the end of the epoch: before, a short shard ended
the epoch after 2 of 10 batches, advanced ``loader.epoch`` and was saved as a finished epoch (under DDP only that
rank stopped, and the job hung). Every way in is tried through real files, with ``num_workers`` 0 and 2: the error
reaches the main process naming the shard, the count recorded and the count found.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from torch_input_ckpt import InputStateError, ResumableDataLoader, Shard, ShardedStream
from torch_input_ckpt.stream.formats import open_samples
from torch_input_ckpt.stream.readers import ShardReaders
from torch_input_ckpt.stream.shards import write_index

from tests.support.stream_data import deliver_all, ids_collate, write_shards

SIZES = (6, 13, 5, 9)  # the 13-sample shard is the one cut short
VICTIM = "shard-001.jsonl"


def run_epoch(stream: ShardedStream, workers: int) -> tuple[list[str], ResumableDataLoader]:
    loader = ResumableDataLoader(stream, batch_size=2, collate_fn=ids_collate, num_workers=workers, seed=5)
    return [sample for batch in deliver_all(loader) for sample in batch], loader


def rewrite_keeping_size_and_mtime(path: Path, drop_last: int) -> None:
    """Blank the last ``drop_last`` lines in place (same size), then put the modification time back: what
    ``cp -p`` or ``rsync -t`` of another version of the shard leaves, which the index's size/mtime check passes."""
    before = path.stat()
    lines = path.read_text().splitlines(keepends=True)
    for i in range(len(lines) - drop_last, len(lines)):
        lines[i] = " " * (len(lines[i]) - 1) + "\n"  # a blank line is no sample
    path.write_text("".join(lines))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_shard_rewritten_with_the_same_size_and_mtime_is_an_error_not_the_epochs_end(tmp_path, workers):
    root = write_shards(tmp_path / "corpus", "jsonl", SIZES)
    write_index(root)
    victim = root / VICTIM
    rewrite_keeping_size_and_mtime(victim, drop_last=4)
    # Constructing may already refuse it (an index that records the content); delivering fewer samples may not.
    with pytest.raises(InputStateError, match=re.escape(str(victim))) as raised:
        run_epoch(ShardedStream(root, lanes=2, seed=3), workers)
    if "ended after" in str(raised.value):
        assert "ended after 9 samples, but its recorded count is 13" in str(raised.value)


def short_opener(source: tuple[str, int, int], start: int):
    """A user ``open_shard`` over ``(name, recorded, actual)`` that stops after ``actual`` samples."""
    name, _, actual = source
    return iter([{"id": f"{name}-{k}"} for k in range(start, actual)])


def id_of(sample):
    return sample["id"]


@pytest.mark.parametrize("workers", [0, 2])
def test_an_open_shard_that_ends_early_is_an_error_naming_shard_and_counts(workers):
    sources = [("web", 8, 8), ("code", 10, 7), ("math", 6, 6)]
    stream = ShardedStream([Shard(s, s[1]) for s in sources], short_opener, lanes=2, seed=1)
    loader = ResumableDataLoader(
        stream, batch_size=2, collate_fn=lambda b: [id_of(s) for s in b], num_workers=workers, seed=5
    )
    with pytest.raises(InputStateError) as raised:
        deliver_all(loader)
    message = str(raised.value)
    assert "('code', 10, 7): shard ended after 7 samples, but its recorded count is 10" in message
    assert loader.epoch == 0, "the epoch must not count as finished"


@pytest.mark.parametrize("kind", ["jsonl", "jsonl.gz", "tar"])
def test_a_wrong_shard_count_is_an_error_naming_shard_and_counts(tmp_path, kind):
    root = write_shards(tmp_path / "corpus", kind, SIZES)
    paths = sorted(root.iterdir())
    shards = [Shard(str(p), n + 2 * (i == 2)) for i, (p, n) in enumerate(zip(paths, SIZES, strict=True))]
    match = r"shard-002\.\S+: shard ended after 5 samples, but its recorded count is 7"
    with pytest.raises(InputStateError, match=match):
        run_epoch(ShardedStream(shards, lanes=2, seed=3), workers=0)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_npy_shard_of_another_length_than_recorded_is_refused(tmp_path, workers):
    root = write_shards(tmp_path / "corpus", "npy", SIZES)
    paths = sorted(root.iterdir())
    shards = [Shard(str(p), n + (i == 3), n * 3) for i, (p, n) in enumerate(zip(paths, SIZES, strict=True))]
    match = r"shard-003\.npy: shard holds 9 samples but its recorded count is 10"
    with pytest.raises(InputStateError, match=match):
        run_epoch(ShardedStream(shards, lanes=2, seed=3), workers)
    packed = ShardedStream(shards, lanes=2, seed=3, pack_to=4)
    with pytest.raises(InputStateError, match=match):
        list(ResumableDataLoader(packed, batch_size=2, seed=5))


def test_a_short_shard_is_refused_when_packing_too(tmp_path):
    root = write_shards(tmp_path / "corpus", "jsonl", SIZES)
    write_index(root, "tokens")
    rewrite_keeping_size_and_mtime(root / VICTIM, drop_last=3)
    with pytest.raises(InputStateError, match=re.escape(str(root / VICTIM))):
        list(ResumableDataLoader(ShardedStream(root, lanes=2, seed=3, pack_to=4, tokens="tokens"), batch_size=2))


def test_a_reader_that_raised_is_reopened_not_taken_for_the_shards_end(tmp_path):
    path = tmp_path / "web.jsonl"
    path.write_text('{"n": 0}\n{"n": 1}\nnot json\n{"n": 3}\n')
    readers = ShardReaders(open_samples, size=4, counts=[4])
    assert readers.read(0, str(path), 1) == {"n": 1}
    with pytest.raises(InputStateError, match=r"web\.jsonl: line 3 \(sample 2\): not valid JSON"):
        readers.read(0, str(path), 3)
    # Asked again, the shard is reopened at sample 3 (skipped lines are not decoded): no "shard ended".
    assert readers.read(0, str(path), 3) == {"n": 3}


def test_big_endian_npy_rows_are_delivered_in_native_order(tmp_path):
    rows = np.arange(4 * 3, dtype=np.int64).reshape(4, 3) * 1000 + 7
    path = tmp_path / "web.npy"
    np.save(path, rows.astype(">i8"))
    loader = ResumableDataLoader(ShardedStream([path], shuffle=False), batch_size=2, seed=5)
    got = np.concatenate([batch.numpy() for batch in loader])
    assert got.tolist() == rows.tolist()
    assert [np.asarray(s).tolist() for s in open_samples(str(path))] == rows.tolist()
