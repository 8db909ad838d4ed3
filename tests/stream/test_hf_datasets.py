"""Hugging Face ``datasets``: a ``Dataset`` as the map-style dataset of ``ResumableDataLoader`` (with_format("torch"),
a transform that draws), and ``stream_hf_dataset`` (its Arrow or Parquet files as a ``ShardedStream``), each
resumed through the checkpoint file into a loader with other workers, exactly once per epoch; what is not its
files' rows refused; the docs' example run twice, the second time in a fresh process. Datasets are built here
(``Dataset.from_dict``, ``save_to_disk``, ``to_parquet``): nothing is downloaded."""

from __future__ import annotations

import ast
from pathlib import Path

import datasets
import pytest
import torch

from torch_input_ckpt import ResumableDataLoader, stream_hf_dataset
from torch_input_ckpt.stream.shards import write_index

from tests.support.examples import run_fresh, run_here
from tests.support.resume import check_exactly_once, epochs_of, resume_chain

SOURCES = ("web", "code", "math")  # 7 rows each, in this (unsorted) order
ROWS = 21


def rows() -> dict[str, list]:
    ids = [f"{source}-{k}" for source in SOURCES for k in range(7)]
    return {"id": ids, "n": list(range(ROWS)), "tokens": [[n, n + 1, n + 2][: 1 + n % 3] for n in range(ROWS)]}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hf") / "saved"
    datasets.Dataset.from_dict(rows()).save_to_disk(path, num_shards=3)
    return path


def numbers(batch) -> list[int]:
    return [int(n) for n in batch]


# -- a Dataset as a map-style dataset ---------------------------------------------------------------------------


def noisy(batch):
    """A transform that draws from torch's global RNG (the loader reseeds it per sample)."""
    return {"n": batch["n"], "noise": torch.rand(len(batch["n"])).tolist()}


@pytest.mark.parametrize("how", ["torch", "transform"])
def test_a_dataset_as_the_map_style_dataset_resumes_through_the_checkpoint_file(saved, how):
    ds = datasets.load_from_disk(saved)
    ds = ds.with_format("torch", columns=["n", "tokens"]) if how == "torch" else ds.with_transform(noisy)

    def make(num_workers: int = 0) -> ResumableDataLoader:
        collate = (lambda b: [(int(r["n"]), r["tokens"].tolist()) for r in b]) if how == "torch" else None
        collate = collate or (lambda b: [(r["n"], r["noise"]) for r in b])
        return ResumableDataLoader(ds, batch_size=4, shuffle=True, seed=3, num_workers=num_workers, collate_fn=collate)

    expected = list(epochs_of(make(), 2))
    stream, _ = resume_chain(make, [2, 6, 8], 2, resume_with=lambda: make(2))
    assert stream == expected
    check_exactly_once(stream, lambda batch: [n for n, _ in batch], ROWS)
    if how == "transform":
        draws = [d for _, batch in stream for _, d in batch]
        assert len(set(draws)) == len(draws), "each sample drew its own numbers"


# -- its files as a stream ---------------------------------------------------------------------------------------


def stream_loader(source, num_workers: int = 0, **arguments) -> ResumableDataLoader:
    stream = stream_hf_dataset(source, window=5, seed=1, lanes=2, **arguments)
    collate = (lambda b: [r["input_ids"].tolist() for r in b]) if "pack_to" in arguments else None
    collate = collate or (lambda b: [r["n"] for r in b])
    return ResumableDataLoader(stream, batch_size=3, num_workers=num_workers, collate_fn=collate)


def test_a_saved_dataset_streams_window_shuffled_exactly_once_and_resumes(saved):
    ds = datasets.load_from_disk(saved)
    assert [Path(f["filename"]).name for f in ds.cache_files] == [f"data-0000{i}-of-00003.arrow" for i in range(3)]
    expected = list(epochs_of(stream_loader(ds), 2))
    order = [n for _, batch in expected[: len(expected) // 2] for n in batch]
    assert order != sorted(order), "window-shuffled"
    stream, _ = resume_chain(lambda: stream_loader(ds), [1, 5, 9], 2, resume_with=lambda: stream_loader(ds, 2))
    assert stream == expected
    check_exactly_once(stream, numbers, ROWS)
    # The directory itself (its state.json lists the files): the same stream, the dataset's columns aside.
    assert list(epochs_of(stream_loader(saved), 2)) == expected


def test_parquet_files_stream_packed_with_token_counts_from_a_column(tmp_path):
    data = rows()
    for s, source in enumerate(SOURCES):
        part = {key: values[7 * s : 7 * s + 7] for key, values in data.items()}
        datasets.Dataset.from_dict(part).to_parquet(tmp_path / f"{source}.parquet")
    write_index(tmp_path, "tokens")
    make = lambda workers=0: stream_loader(tmp_path, workers, pack_to=4, tokens="tokens")  # noqa: E731
    expected = list(epochs_of(make(), 1))
    stream, _ = resume_chain(make, [1, 3], 1, resume_with=lambda: make(2))
    assert stream == expected
    packed = sorted(t for _, batch in stream for sequence in batch for t in sequence if t)  # 0 pads
    assert packed == sorted(t for tokens in data["tokens"] for t in tokens if t), "every token once"


def test_what_is_not_its_files_rows_is_refused_with_the_fix(saved):
    ds = datasets.load_from_disk(saved)
    cases = [
        (datasets.Dataset.from_dict(rows()), "held in memory .*save_to_disk"),
        (ds.shuffle(seed=0), "indices mapping .*flatten_indices"),
        (ds.select(range(5)), "holds 5 rows of its files' 7 \\(1 files"),
        (ds.with_format("torch"), "format 'torch' .*reset_format"),
        (datasets.DatasetDict({"train": ds}), r"stream one split, e\.g\. ds\['train'\]"),
    ]
    for dataset, match in cases:
        with pytest.raises(ValueError, match=match):
            stream_hf_dataset(dataset)
    bad = saved.parent / "bad"
    bad.mkdir(exist_ok=True)
    for text, match in (
        ("[]", "not the state.json save_to_disk writes"),
        ('{"_data_files": [{"filename": "../x.arrow"}]}', "not a plain file name"),
    ):
        (bad / "state.json").write_text(text)
        with pytest.raises(ValueError, match=match):
            stream_hf_dataset(bad)
    flat = ds.shuffle(seed=0).flatten_indices(cache_file_name=str(saved.parent / "flat.arrow"))
    assert [r["n"] for r in stream_hf_dataset(flat, shuffle=False)] == flat["n"]


# -- the docs' example, resumed in a fresh process ------------------------------------------------------------------


@pytest.mark.slow
def test_hf_datasets_example_resumes_both_loaders_in_a_fresh_process(tmp_path, capfd):
    capfd.readouterr()
    run_here("hf_datasets.py", tmp_path)
    first = [line.split(" ", 1) for line in capfd.readouterr().out.splitlines()]
    second, _ = run_fresh("hf_datasets.py", tmp_path)
    for name in ("map", "stream"):
        head = [ast.literal_eval(batch) for kind, batch in first if kind == name]
        rest, uninterrupted = (ast.literal_eval(line.split(" ", 1)[1]) for line in second if line.startswith(name))
        assert head + rest == uninterrupted, f"{name}: the resumed epoch differs (another num_workers, fresh process)"
        assert len(head) == 2 and len([row for batch in uninterrupted for row in batch]) == ROWS
