"""A ShardedStream inside a Mixture keeps its own order (each source epoch is the stream's epoch, read
forward as alone), exactly once per source epoch, resumed from the checkpoint FILE into fresh objects
(workers included); a packed stream that grew inside ``Mixture(allow_growth=True)`` is refused, as the
stream alone refuses it.

Source names are never alphabetical ("web", "code", "math")."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

from torch_input_ckpt import InputCheckpointer, InputStateError, Mixture, ResumableDataLoader, ShardedStream
from torch_input_ckpt.store.files import InputFile
from torch_input_ckpt.stream.shards import write_index

from tests.support.mixture_files import run_steps
from tests.support.stream_data import write_shards

WEB_SIZES = (7, 0, 2, 13, 5, 9, 1, 6)  # 43 documents
CODE_SIZES = (4, 9, 3)  # 16 documents


def tag(name: str, sample: Any) -> tuple[str, Any]:
    """What a delivered item says: its source, and its document id or packed tokens."""
    if isinstance(sample, dict) and "input_ids" in sample:
        return name, tuple(sample["input_ids"].tolist())
    return name, sample["id"]


def streams(root: Path, *, pack_to: int | None = None) -> dict[str, ShardedStream]:
    out = {}
    for name, sizes in (("web", WEB_SIZES), ("code", CODE_SIZES)):
        shards = root / name
        if not shards.exists():
            write_shards(shards, "jsonl.gz", sizes)
            write_index(shards, tokens="tokens" if pack_to else None)
        out[name] = ShardedStream(
            shards,
            lanes=3,
            seed=11,
            window=4,
            pack_to=pack_to,
            tokens="tokens" if pack_to else None,
            transform=functools.partial(tag, name),
        )
    return out


def mixed(
    root: Path, *, pack_to: int | None = None, allow_growth: bool = False, workers: int = 0
) -> ResumableDataLoader:
    sources: dict[str, Any] = streams(root, pack_to=pack_to)
    sources["math"] = [("math", i) for i in range(5)]
    mix = Mixture(sources, {"web": 5, "code": 3, "math": 2}, samples_per_epoch=40, allow_growth=allow_growth)
    return ResumableDataLoader(mix, batch_size=4, seed=2, collate_fn=list, num_workers=workers)


def alone(stream: ShardedStream, epochs: int) -> list[Any]:
    loader = ResumableDataLoader(stream, batch_size=4, seed=2, collate_fn=list)
    return [item for epoch in range(epochs) for batch in loader for item in batch]


def test_a_stream_source_reads_its_own_order_forward(tmp_path):
    loader = mixed(tmp_path)
    delivered = [item for _ in range(4) for batch in loader for item in batch]  # 160 samples
    for name, stream in streams(tmp_path).items():
        mine = [item for item in delivered if item[0] == name]
        expected = alone(stream, -(-len(mine) // len(stream)))
        assert mine == expected[: len(mine)], f"{name}: not the stream's own order"


def run(directory: Path, root: Path, steps: int, *, restore: int | None = None, **options: Any) -> dict[int, list]:
    return run_steps(directory, mixed(root, **options), steps, restore=restore, epochs=10)


@pytest.mark.parametrize("pack_to", [None, 6])
def test_a_mixture_of_streams_resumes_from_the_file(tmp_path, pack_to):
    uninterrupted = run(tmp_path / "u", tmp_path, 30, pack_to=pack_to)
    run(tmp_path / "r", tmp_path, 13, pack_to=pack_to)
    resumed = run(tmp_path / "r", tmp_path, 30, restore=13, pack_to=pack_to, workers=2)
    assert resumed == {s: b for s, b in uninterrupted.items() if s > 13}


def test_a_grown_packed_stream_in_a_mixture_is_refused(tmp_path):
    run(tmp_path / "ckpt", tmp_path, 8, pack_to=6, allow_growth=True)
    write_shards(tmp_path / "web", "jsonl.gz", (*WEB_SIZES, 5))  # a shard appended
    write_index(tmp_path / "web", tokens="tokens")
    loader = mixed(tmp_path, pack_to=6, allow_growth=True)
    with InputCheckpointer(tmp_path / "ckpt", loader) as ckpt, pytest.raises(InputStateError) as error:
        ckpt.restore(8)
    message = str(error.value)
    assert "sources['web']" in message and InputFile(0, 8).name in message


def test_a_source_that_lost_its_own_order_is_refused(tmp_path):
    run(tmp_path / "ckpt", tmp_path, 8)
    sources: dict[str, Any] = dict(streams(tmp_path))
    sources["web"] = [("web", i) for i in range(len(sources["web"]))]  # same length, no own order
    sources["math"] = [("math", i) for i in range(5)]
    mix = Mixture(sources, {"web": 5, "code": 3, "math": 2}, samples_per_epoch=40)
    loader = ResumableDataLoader(mix, batch_size=4, seed=2, collate_fn=list)
    with InputCheckpointer(tmp_path / "ckpt", loader) as ckpt, pytest.raises(InputStateError, match="'ShardedStream'"):
        ckpt.restore(8)


def test_samples_of_a_mixture_of_streams_and_skip_still_works(tmp_path):
    from torch_input_ckpt.provenance.history import Provenance

    uninterrupted = run(tmp_path / "u", tmp_path, 30)
    run(tmp_path / "r", tmp_path, 13)
    # A stream source's key names its shard file and sample number, from the shard table its state records.
    for step in (5, 12):
        named = [
            (name, i) if name == "math" else (name, f"shard-{int(i.split('-')[0]):03d}.jsonl.gz", int(i.split("-")[1]))
            for name, i in uninterrupted[step]
        ]
        assert Provenance(tmp_path / "r", batches_per_step=1).step(step).keys[0] == named, step
    loader = mixed(tmp_path)
    with InputCheckpointer(tmp_path / "r", loader, every_n_steps=1, keep_last=None) as ckpt:
        step = ckpt.restore(10, skip_steps=3)
        assert step == 13
        batches = (batch for _ in range(10) for batch in loader)
        assert [next(batches) for _ in range(14, 31)] == [uninterrupted[s] for s in range(14, 31)]


def test_a_plain_dataset_refuses_a_stream_state(tmp_path):
    stream = streams(tmp_path)["web"]
    loader = ResumableDataLoader(stream, batch_size=4, collate_fn=list)
    with InputCheckpointer(tmp_path / "ckpt", loader, every_n_steps=1) as ckpt:
        batches = iter(loader)
        for step in (1, 2, 3):
            next(batches)
            ckpt.after_step(step)
    plain = ResumableDataLoader([("web", i) for i in range(len(stream))], batch_size=4, collate_fn=list)
    with InputCheckpointer(tmp_path / "ckpt", plain) as ckpt, pytest.raises(InputStateError) as error:
        ckpt.restore(3)
    assert "'ShardedStream'" in str(error.value) and "list" in str(error.value)


def test_a_mixture_of_streams_resumes_with_spawned_workers(tmp_path):
    """Spawned workers receive the mixture pickled (its order cache is left behind)."""
    run(tmp_path / "r", tmp_path, 6)
    expected = run(tmp_path / "u", tmp_path, 14)  # over the epoch's end (10 batches): workers start again
    loader = mixed(tmp_path)
    loader = ResumableDataLoader(
        loader.dataset, batch_size=4, seed=2, collate_fn=list, num_workers=1, multiprocessing_context="spawn"
    )
    with InputCheckpointer(tmp_path / "r", loader, every_n_steps=1, keep_last=None) as ckpt:
        ckpt.restore(6)
        batches = (batch for _ in range(2) for batch in loader)
        assert [next(batches) for _ in range(8)] == [expected[s] for s in range(7, 15)]


def test_new_weights_keep_each_stream_in_its_own_order(tmp_path):
    """After a resume with new weights, each stream continues from its exact next sample: what it delivered
    before and after the change is a prefix of the stream's own order (exactly once per source epoch)."""
    first = run(tmp_path / "ckpt", tmp_path, 13)
    sources: dict[str, Any] = dict(streams(tmp_path))
    sources["math"] = [("math", i) for i in range(5)]
    mix = Mixture(sources, {"web": 2, "code": 7, "math": 1}, samples_per_epoch=40)
    loader = ResumableDataLoader(mix, batch_size=4, seed=2, collate_fn=list, num_workers=2)
    with InputCheckpointer(tmp_path / "ckpt", loader, every_n_steps=1) as ckpt:
        ckpt.restore(9)
    after = [item for _ in range(4) for batch in loader for item in batch]
    delivered = [item for step in range(1, 10) for item in first[step]] + after
    for name, stream in streams(tmp_path).items():
        mine = [item for item in delivered if item[0] == name]
        expected = alone(stream, -(-len(mine) // len(stream)))
        assert mine == expected[: len(mine)], f"{name}: not the stream's own order across the change"
