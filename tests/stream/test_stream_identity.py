"""What a ShardedStream checkpoint is tied to, through the checkpoint file: the shards' relative paths, order
and content (issue 21 case 4), and token counts made the way the stream takes tokens (case 3, case 9)."""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from torch_input_ckpt import InputCheckpointer, InputStateError, ResumableDataLoader, Shard, ShardedStream
from torch_input_ckpt.stream.shards import write_index

from tests.support.paths import SUPPORT
from tests.support.resume import start_child, to_py
from tests.support.stream_data import ids_collate, write_shards

PACK = 8


def _loader(stream: ShardedStream, collate=None) -> ResumableDataLoader:
    return ResumableDataLoader(stream, batch_size=2, collate_fn=collate or _packed)


def _packed(samples):
    return [s["input_ids"].tolist() for s in samples]


def save_and_restore(directory: Path, before: ResumableDataLoader, stop: int, make_after) -> tuple[list, list]:
    """Run ``before`` for ``stop`` batches, save through an InputCheckpointer (the file), restore the file into
    a fresh loader ``make_after()`` (built after the save) and run it on; return both parts."""
    it = iter(before)
    first = [to_py(next(it)) for _ in range(stop)]
    with InputCheckpointer(directory, before) as ckpt:
        ckpt.save(stop)
    del it
    after = make_after()
    with InputCheckpointer(directory, after) as ckpt:
        assert ckpt.restore() == stop
    return first, [to_py(b) for b in after]


# -- case 4: paths relative to the data directory, order, content ----------------------------------------


def _two_corpora(root: Path) -> list[Path]:
    """``web/part-0.npy`` and ``code/part-0.npy``: the same file name and shape, other tokens."""
    paths = []
    for name, base in (("web", 100), ("code", 900)):
        (root / name).mkdir(parents=True)
        path = root / name / "part-0.npy"
        np.save(path, np.arange(base, base + 24, dtype=np.int64).reshape(8, 3))
        paths.append(path)
    return paths


def _rows(samples):
    return [np.asarray(s).tolist() for s in samples]


def test_paths_in_another_order_are_refused_on_resume(tmp_path):
    web, code = _two_corpora(tmp_path / "data")
    before = _loader(ShardedStream([web, code], lanes=1, shuffle=False), _rows)
    with pytest.raises(InputStateError, match="same shard files, in the same order"):
        save_and_restore(
            tmp_path / "ckpt", before, 2, lambda: _loader(ShardedStream([code, web], lanes=1, shuffle=False), _rows)
        )


def test_a_directly_given_npy_rewritten_is_refused_on_resume(tmp_path):
    web, code = _two_corpora(tmp_path / "data")
    before = _loader(ShardedStream([web, code], lanes=1), _rows)
    it = iter(before)
    next(it)
    with InputCheckpointer(tmp_path / "ckpt", before) as ckpt:
        ckpt.save(1)
    np.save(web, np.arange(500, 524, dtype=np.int64).reshape(8, 3))  # same shape: same names and counts
    after = _loader(ShardedStream([web, code], lanes=1), _rows)
    with InputCheckpointer(tmp_path / "ckpt", after) as ckpt, pytest.raises(InputStateError, match="fingerprint"):
        ckpt.restore()


def test_a_reindexed_shard_of_the_same_count_is_refused_on_resume(tmp_path):
    root = write_shards(tmp_path / "shards", "jsonl", (3, 4, 2))
    write_index(root, "tokens")
    before = _loader(ShardedStream(root, lanes=2, seed=3), ids_collate)
    it = iter(before)
    next(it)
    with InputCheckpointer(tmp_path / "ckpt", before) as ckpt:
        ckpt.save(1)
    victim = root / "shard-001.jsonl"
    lines = victim.read_text().splitlines()
    victim.write_text("\n".join(reversed(lines)) + "\n")  # the same documents, in another order
    write_index(root, "tokens")
    after = _loader(ShardedStream(root, lanes=2, seed=3), ids_collate)
    with InputCheckpointer(tmp_path / "ckpt", after) as ckpt, pytest.raises(InputStateError, match="fingerprint"):
        ckpt.restore()


def test_the_same_files_mounted_elsewhere_resume_exactly(tmp_path):
    paths = _two_corpora(tmp_path / "first")
    expected = [to_py(b) for b in _loader(ShardedStream(paths, lanes=2, seed=5), _rows)]
    shutil.copytree(tmp_path / "first", tmp_path / "mounted" / "elsewhere")  # copy2: sizes and mtimes kept
    moved = [tmp_path / "mounted" / "elsewhere" / p.relative_to(tmp_path / "first") for p in paths]
    before = _loader(ShardedStream(paths, lanes=2, seed=5), _rows)
    first, rest = save_and_restore(
        tmp_path / "ckpt", before, 3, lambda: _loader(ShardedStream(moved, lanes=2, seed=5), _rows)
    )
    assert first + rest == expected


def test_an_indexed_directory_copied_without_its_times_and_reindexed_resumes_exactly(tmp_path):
    """A download or a plain `cp` gives the shards new mtimes: the index is refused until re-run, and then the
    stream is the same one (its identity is the shards' sizes and content digests, not their mtimes)."""
    root = write_shards(tmp_path / "first", "jsonl", (3, 4, 2))
    write_index(root, "tokens")
    expected = [to_py(b) for b in _loader(ShardedStream(root, lanes=2, seed=3), ids_collate)]
    copied = tmp_path / "copied"
    shutil.copytree(root, copied, copy_function=shutil.copy)  # contents only: new mtimes
    for path in copied.iterdir():
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    with pytest.raises(ValueError, match="index"):
        ShardedStream(copied, lanes=2, seed=3)
    write_index(copied, "tokens")
    before = _loader(ShardedStream(root, lanes=2, seed=3), ids_collate)
    first, rest = save_and_restore(
        tmp_path / "ckpt", before, 2, lambda: _loader(ShardedStream(copied, lanes=2, seed=3), ids_collate)
    )
    assert first + rest == expected


def _find(tree, key):
    """The dict of a saved state tree that holds ``key`` (the stream's order state)."""
    if isinstance(tree, dict):
        if key in tree:
            return tree
        tree = list(tree.values())
    if isinstance(tree, list):
        for item in tree:
            found = _find(item, key)
            if found is not None:
                return found
    return None


def test_a_state_saved_with_the_earlier_name_only_fingerprint_resumes_with_a_warning(tmp_path):
    """A run saved before the fingerprint covered paths and contents resumes on what that version checked
    (file names and counts, which it still must match), and says what it cannot see."""
    import hashlib

    from torch_input_ckpt import InputCheckpointWarning
    from torch_input_ckpt.store.files import encode_checkpoint, read_checkpoint

    paths = _two_corpora(tmp_path / "data")
    expected = [to_py(b) for b in _loader(ShardedStream(paths, lanes=2, seed=5), _rows)]
    before = _loader(ShardedStream(paths, lanes=2, seed=5), _rows)
    it = iter(before)
    first = [to_py(next(it)) for _ in range(3)]
    with InputCheckpointer(tmp_path / "ckpt", before) as ckpt:
        ckpt.save(3)
    [file] = [p for p in (tmp_path / "ckpt").iterdir() if p.name.startswith("input_0-")]
    saved = read_checkpoint(file)
    order = _find(saved.states, "fingerprint")
    old = hashlib.sha256()  # the formula of bdd48c3's shards.fingerprint, written out here on purpose
    for path, shard in zip(paths, before.dataset.shards, strict=True):
        old.update(f"{path.name}\0{shard.count}\0{shard.tokens}\n".encode())
    order["fingerprint"] = old.hexdigest()[:16]
    file.write_bytes(
        encode_checkpoint(
            rank=saved.rank,
            world_size=saved.world_size,
            step=saved.step,
            states=saved.states,
            external=saved.external,
            provenance=saved.provenance,
        )
    )
    after = _loader(ShardedStream(paths, lanes=2, seed=5), _rows)
    with pytest.warns(InputCheckpointWarning, match="older torch_input_ckpt.*file names and counts"):
        with InputCheckpointer(tmp_path / "ckpt", after) as ckpt:
            assert ckpt.restore() == 3
    rest = [to_py(b) for b in after]
    assert first + rest == expected
    fewer = _loader(ShardedStream(paths[:1], lanes=2, seed=5), _rows)  # what the old check refused, still refused
    with InputCheckpointer(tmp_path / "ckpt", fewer) as ckpt, pytest.raises(InputStateError):
        ckpt.restore()
        next(iter(fewer))


# -- case 3: token counts of the stream's own tokens= ----------------------------------------------------------


def _texts(root: Path) -> Path:
    """JSON lines with a text field and a token-id field (``ids``: a shorter, word-level tokenization)."""
    root.mkdir(parents=True)
    for s, words in enumerate((["alpha beta", "gamma", "delta epsilon zeta"], ["eta theta", "iota kappa lambda mu"])):
        records = [{"text": t, "ids": [len(w) for w in t.split()]} for t in words]
        (root / f"part-{s}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def byte_tokenizer(sample):
    return list(sample["text"].encode())


def test_a_text_field_is_refused_not_counted_by_characters(tmp_path):
    root = _texts(tmp_path / "d")
    with pytest.raises(ValueError, match=r"part-0.jsonl: sample 0: field 'text' gives text .*--tokenizer"):
        write_index(root, "text")
    assert not (root / "torch_input_ckpt_index.json").exists()


def test_counts_made_with_the_tokenizer_pack_every_token_once(tmp_path):
    root = _texts(tmp_path / "d")
    write_index(root, byte_tokenizer)
    stream = ShardedStream(root, lanes=1, shuffle=False, pack_to=PACK, tokens=byte_tokenizer)
    delivered = [t for batch in _loader(stream) for seq in batch for t in seq]
    texts = [json.loads(line)["text"] for p in sorted(root.glob("*.jsonl")) for line in p.read_text().splitlines()]
    expected = [t for text in texts for t in text.encode()]
    assert delivered[: len(expected)] == expected
    assert len(delivered) == -(-len(expected) // PACK) * PACK  # only the padding of the last sequence beyond


def test_counts_of_another_field_or_tokenizer_are_refused(tmp_path):
    root = _texts(tmp_path / "d")
    write_index(root, "ids")
    with pytest.raises(InputStateError, match=r"came from field 'ids'.*tokens from tokenizer .*byte_tokenizer"):
        ShardedStream(root, pack_to=PACK, tokens=byte_tokenizer)
    write_index(root, byte_tokenizer)
    with pytest.raises(InputStateError, match=r"came from tokenizer .*byte_tokenizer.*from field 'ids'.*--tokens ids"):
        ShardedStream(root, pack_to=PACK, tokens="ids")
    ShardedStream(root, tokens="ids")  # without packing the counts are not used: accepted


def test_a_tokenizer_changed_under_the_same_name_is_caught_when_read(tmp_path):
    root = _texts(tmp_path / "d")
    write_index(root, byte_tokenizer)

    def byte_tokenizer_v2(sample):  # e.g. a new vocabulary behind the same function
        return list(sample["text"].upper().encode()) + [0]

    byte_tokenizer_v2.__module__, byte_tokenizer_v2.__qualname__ = byte_tokenizer.__module__, "byte_tokenizer"
    stream = ShardedStream(root, lanes=1, shuffle=False, pack_to=PACK, tokens=byte_tokenizer_v2)
    with pytest.raises(
        InputStateError,
        match=r"part-0.jsonl: 33 tokens recorded for its 3 documents, but its documents 0..2 already hold 36",
    ):
        list(_loader(stream))


@pytest.mark.parametrize("recorded", [30, 20])
def test_a_wrong_token_count_names_shard_document_and_counts(tmp_path, recorded):
    root = _texts(tmp_path / "d")
    path = root / "part-1.jsonl"  # ids [3, 5] and [4, 5, 6, 2]: 6 tokens; bytes: 9 + 20 = 29
    shards = [Shard(path, 2, recorded)]
    # 30: one more than the documents hold; 20: less (document 1 runs past it)
    stream = ShardedStream(shards, lanes=1, shuffle=False, pack_to=PACK, tokens=byte_tokenizer)
    found = "its last document, number 1, ends at token 29" if recorded > 29 else "its documents 0..1 already hold 29"
    with pytest.raises(
        InputStateError, match=rf"part-1.jsonl: {recorded} tokens recorded for its 2 documents, but {found}"
    ):
        list(_loader(stream))


def test_a_count_reached_before_the_last_document_is_caught(tmp_path):
    root = _texts(tmp_path / "d")
    path = root / "part-1.jsonl"
    stream = ShardedStream([Shard(path, 2, 9)], lanes=1, shuffle=False, pack_to=PACK, tokens=byte_tokenizer)
    with pytest.raises(
        InputStateError, match=r"9 tokens recorded for its 2 documents, but its documents 0..1 already hold 29"
    ):
        list(_loader(stream))
    empty_tail = root / "tail.jsonl"
    empty_tail.write_text(path.read_text() + json.dumps({"text": ""}) + "\n")
    good = ShardedStream([Shard(empty_tail, 3, 29)], lanes=1, shuffle=False, pack_to=PACK, tokens=byte_tokenizer)
    assert len([t for b in _loader(good) for s in b for t in s]) == 32  # trailing empty document: fine


def test_a_hand_edited_token_count_is_refused(tmp_path):
    root = _texts(tmp_path / "d")
    write_index(root, "ids")
    index_path = root / "torch_input_ckpt_index.json"
    index = json.loads(index_path.read_text())
    index["shards"][0]["tokens"] += 8  # 0 of 8 sequences were delivered right before the checksum
    index_path.write_text(json.dumps(index, indent=1, sort_keys=True))
    with pytest.raises(InputStateError, match=r"torch_input_ckpt_index.json: checksum mismatch.*Re-run `python -m"):
        ShardedStream(root, pack_to=4, tokens="ids")


def test_resume_over_a_moved_tokenized_directory(tmp_path):
    root = _texts(tmp_path / "d")
    write_index(root, byte_tokenizer)

    def make(where):
        return _loader(ShardedStream(where, lanes=2, seed=7, window=2, pack_to=PACK, tokens=byte_tokenizer))

    expected = [to_py(b) for b in make(root)]
    moved = tmp_path / "moved"

    def move_then_make():
        os.rename(root, moved)
        return make(moved)

    first, rest = save_and_restore(tmp_path / "ckpt", make(root), 2, move_then_make)
    assert first + rest == expected


# -- in a fresh process ------------------------------------------------------------------------------------


def _child(shards: Path, ckpt: Path, log: Path, total: int):
    child = start_child(SUPPORT / "stream_child.py", shards, ckpt, log, total)
    _, err = child.communicate(timeout=180)
    return child.returncode, err.decode(errors="replace")


def test_a_fresh_process_resumes_a_moved_directory_and_refuses_a_reindexed_change(tmp_path):
    first = write_shards(tmp_path / "first", "npy", (5, 3, 6, 4))
    write_index(first)
    ckpt, log = tmp_path / "ckpt", tmp_path / "log.jsonl"
    assert _child(first, ckpt, log, 3)[0] == 0
    moved = tmp_path / "moved"
    os.rename(first, moved)  # the same files at another path
    assert _child(moved, ckpt, log, 6)[0] == 0
    records = [json.loads(line) for line in log.read_text().splitlines() if line]
    assert [r["restored"] for r in records if "restored" in r] == [0, 3]
    stream = ShardedStream(moved, lanes=3, seed=2, window=3, pack_to=5)  # stream_child.py's configuration
    reference = ResumableDataLoader(stream, batch_size=2, seed=4)
    expected = [{k: v.tolist() for k, v in batch.items()} for batch in itertools.islice(reference, 6)]
    assert [r["batch"] for r in records if "step" in r] == expected
    np.save(moved / "shard-002.npy", np.load(moved / "shard-002.npy")[::-1].copy())  # same shape, other rows
    write_index(moved)
    code, err = _child(moved, ckpt, log, 9)
    assert code != 0 and "InputStateError" in err and "fingerprint" in err, err[-3000:]


def test_packing_refuses_tokens_that_are_not_integer_ids(tmp_path):
    rows = tmp_path / "rows"
    rows.mkdir()
    np.save(rows / "part-0.npy", np.full((4, 3), 2.7, dtype=np.float32))  # int64 would make every token 2
    with pytest.raises(
        InputStateError, match=r"part-0.npy: rows 0..2: tokens must be integers \(found dtype float32\)"
    ):
        list(_loader(ShardedStream([rows / "part-0.npy"], pack_to=PACK)))
    root = _texts(tmp_path / "d")
    text = ShardedStream([Shard(root / "part-0.jsonl", 3, 33)], pack_to=PACK, tokens="text")
    with pytest.raises(InputStateError, match=r"part-0.jsonl: document 0: its tokens are text \(10 characters\)"):
        list(_loader(text))
