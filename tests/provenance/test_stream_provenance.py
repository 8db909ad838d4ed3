"""``samples`` for a ShardedStream, from the shard table its checkpoints record (never the data): each step's
``(shard file, sample number)``, or each packed sequence's documents and token ranges, equal to what the real
loader delivered on 2 ranks and, after a resharding restore, on 3; ``--sample FILE:ROW`` equal to the steps the
log shows; the table read from the index when it is large, refused when the index changed since the run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from torch_input_ckpt import InputStateError, ShardedStream
from torch_input_ckpt.__main__ import main
from torch_input_ckpt.provenance.history import Provenance
from torch_input_ckpt.stream import table
from torch_input_ckpt.stream.shards import write_index

from tests.support.provenance_runs import run

# Shard order is by name (books, code, math, web): not the order they are written in.
SIZES = {"web": 7, "code": 4, "math": 9, "books": 5}
ROW = 3


def doc_length(name: str, k: int) -> int:
    return 1 + (len(name) + 3 * k) % 5


@pytest.fixture(scope="module")
def jsonl_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("jsonl")
    for name, n in SIZES.items():
        lines = [{"id": [f"{name}.jsonl", k], "tokens": [k] * doc_length(name, k)} for k in range(n)]
        (root / f"{name}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    write_index(root, tokens="tokens")
    return root


@pytest.fixture(scope="module")
def npy_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("npy")
    for i, (name, n) in enumerate(SIZES.items()):
        np.save(root / f"{name}.npy", np.arange(n * ROW, dtype=np.int64).reshape(n, ROW) + 1000 * i)
    write_index(root)
    return root


def resharded_run(directory: Path, make) -> dict[int, dict[int, list]]:
    """2 ranks for steps 1..7 (saved at 3 and 6), then restored on 3 ranks at step 6 and run to step 15."""
    config = dict(make_dataset=make, batch_size=2, shuffle=True, every=3)
    delivered = run(directory, config, world=2, steps=range(1, 8))
    delivered.update(run(directory, config, world=3, steps=range(1, 16), restore=True))
    return delivered


def logged_steps(delivered: dict[int, dict[int, list]], key) -> list[tuple[int, int]]:
    """``(step, rank)`` of every delivery of ``key`` the loop logged (``key`` as the loop names items)."""
    return sorted((s, r) for s, ranks in delivered.items() for r, keys in ranks.items() for k in keys if k == key)


def answered_steps(provenance: Provenance, key, last: int) -> list[tuple[int, int]]:
    found = provenance.sample(key, range(0, 4))
    return sorted((o.step, o.rank) for o in found if o.step <= last)


def test_unpacked_stream_resharded_2_to_3(tmp_path, jsonl_dir, capsys):
    delivered = resharded_run(tmp_path, lambda: ShardedStream(jsonl_dir, lanes=2, window=3, seed=5))
    named = {
        s: {r: [tuple(item["id"]) for item in keys] for r, keys in ranks.items()} for s, ranks in delivered.items()
    }
    provenance = Provenance(tmp_path)
    epochs = set()
    for step, by_rank in named.items():
        answer = provenance.step(step)
        assert dict(answer.keys) == by_rank, f"step {step}"
        epochs.update(answer.epochs)
    assert len(epochs) >= 2 and {len(r) for r in named.values()} == {2, 3}
    for key in [("math.jsonl", 2), ("web.jsonl", 6), ("books.jsonl", 0)]:
        expected = logged_steps(named, key)
        assert expected and answered_steps(provenance, key, max(named)) == expected, key
    # The command (a fresh process runs it in examples/steering_provenance.py): the same keys, as FILE:ROW.
    assert main(["samples", str(tmp_path), "--step", "9", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["keys"] == {str(r): [list(k) for k in ks] for r, ks in named[9].items()}
    # A bad --sample: one line naming it, exit 2 (usage), before or without a scan.
    for sample, message in [
        ("nope.jsonl:1", "'nope.jsonl' is not one of the stream's shards"),
        ("web.jsonl:7", "web.jsonl holds 7 samples: there is no sample 7"),
        ("x" * 5000 + ":1", "at most 4096 characters"),
        ("web.jsonl:x", "--sample takes INDEX or NAME:INDEX"),
        ("3", "takes NAME:NUMBER"),
    ]:
        assert main(["samples", str(tmp_path), "--sample", sample]) == 2, sample
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (sample, err)


def document_pieces(stream: ShardedStream, item) -> list[dict]:
    """The pieces of a delivered packed sequence, from its document_ids and position_ids."""
    pieces: list[dict] = []
    for document, position in zip(item["document_ids"].tolist(), item["position_ids"].tolist(), strict=True):
        if document < 0:
            continue  # padding
        shard, k = stream.locate(document)
        name = Path(stream.shards[shard].source).name
        last = pieces[-1] if pieces else None
        if last and (last["file"], last["document"], last["tokens"][1]) == (name, k, position):
            last["tokens"][1] += 1
        else:
            pieces.append({"file": name, "document": k, "tokens": [position, position + 1]})
    return pieces


def test_packed_npy_documents_resharded_2_to_3(tmp_path, npy_dir):
    stream = ShardedStream(npy_dir, lanes=2, window=2, seed=5, pack_to=4)
    delivered = resharded_run(tmp_path, lambda: ShardedStream(npy_dir, lanes=2, window=2, seed=5, pack_to=4))
    provenance = Provenance(tmp_path)
    logged = {
        s: {r: [document_pieces(stream, x) for x in keys] for r, keys in ranks.items()}
        for s, ranks in delivered.items()
    }
    for step, by_rank in logged.items():
        answer = provenance.step(step).keys
        assert {r: [k["pieces"] for k in keys] for r, keys in answer.items()} == by_rank, f"step {step}"
    # --sample FILE:ROW: the steps whose sequences hold any token of that document.
    for name, k in [("math.npy", 2), ("code.npy", 3)]:
        holding = {
            s: {
                r: [p for seq in keys for p in seq if (p["file"], p["document"]) == (name, k)]
                for r, keys in ranks.items()
            }
            for s, ranks in logged.items()
        }
        expected = sorted((s, r) for s, ranks in holding.items() for r, found in ranks.items() for _ in found)
        assert expected and answered_steps(provenance, (name, k), max(logged)) == expected, name


def test_packed_jsonl_token_ranges(tmp_path, jsonl_dir):
    make = lambda: ShardedStream(jsonl_dir, lanes=2, seed=3, pack_to=5, tokens="tokens")  # noqa: E731
    stream = make()
    config = dict(make_dataset=make, batch_size=2, shuffle=True, every=3)
    delivered = run(tmp_path, config, world=2, steps=range(1, 9))
    provenance = Provenance(tmp_path)
    for step, by_rank in delivered.items():
        for rank, items in by_rank.items():
            answer = provenance.step(step, rank).keys[rank]
            for item, key in zip(items, answer, strict=True):
                # The shard's token ranges: a document's first token is the sum of the lengths before it.
                expected = []
                for piece in document_pieces(stream, item):
                    base = sum(doc_length(piece["file"].split(".")[0], j) for j in range(piece["document"]))
                    lo, hi = base + piece["tokens"][0], base + piece["tokens"][1]
                    if expected and expected[-1]["file"] == piece["file"] and expected[-1]["shard_tokens"][1] == lo:
                        expected[-1]["shard_tokens"][1] = hi
                    else:
                        expected.append({"file": piece["file"], "document": None, "shard_tokens": [lo, hi]})
                assert key["pieces"] == expected, f"step {step} rank {rank}"
    with pytest.raises(InputStateError, match="each document's token count"):
        provenance.sample(("web.jsonl", 1), range(0, 1))


def test_large_table_read_from_the_index_and_refused_when_reindexed(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    for name, n in SIZES.items():
        np.save(data / f"{name}.npy", np.zeros((n, ROW), dtype=np.int64))
    write_index(data)
    monkeypatch.setattr(table, "MAX_INLINE_SHARDS", 2)  # 4 shards: the checkpoint names the index instead
    config = dict(make_dataset=lambda: ShardedStream(data, lanes=2, seed=1), batch_size=2, shuffle=True, every=3)
    delivered = run(tmp_path / "run", config, world=1, steps=range(1, 5))
    state = json.loads((tmp_path / "run" / "input_0-00000003.json").read_text())
    assert "index" in json.dumps(state) and '"rows": null' in json.dumps(state)
    assert len(Provenance(tmp_path / "run").step(4).keys[0]) == len(delivered[4][0])
    np.save(data / "code.npy", np.zeros((6, ROW), dtype=np.int64))  # a shard rewritten, and re-indexed
    write_index(data)
    with pytest.raises(InputStateError, match="does not match the sha256"):
        Provenance(tmp_path / "run").step(4)
    (data / "torch_input_ckpt_index.json").unlink()
    with pytest.raises(InputStateError, match="index .* is missing"):
        Provenance(tmp_path / "run").step(4)
