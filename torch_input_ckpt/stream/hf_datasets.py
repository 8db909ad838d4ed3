"""A Hugging Face ``datasets.Dataset``'s Arrow or Parquet files as a :class:`~torch_input_ckpt.ShardedStream`.

Guarantee: :func:`stream_hf_dataset` reads the very rows the dataset holds, in its order, or refuses:
the files are the dataset's cache files (``ds.cache_files``: its Arrow IPC files), a ``save_to_disk``
directory's data files in the order its ``state.json`` lists them, or a directory of Parquet/Arrow files
(its index if it has one, else its files in name order). A dataset whose rows are not its files' rows is
refused, naming what to do: an indices mapping (after ``select``, ``shuffle``, ``filter``,
``train_test_split``), a part of its files (a contiguous ``select``), rows held in memory only
(``from_dict``), a format or transform (the stream gives rows as dicts: pass ``transform=``). Counts come
from the files' metadata; with ``pack_to`` and a ``tokens`` column, token counts from that column. The
stream is exact, elastic and window-shuffled (``window=``) as any ``ShardedStream``: the exact
replacement of ``IterableDataset.shuffle(buffer_size)`` (huggingface/datasets#7901). ``datasets`` is
imported only to recognise its objects.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .._compat.datasets import hf_dataset_has_indices
from .dataset import ShardedStream
from .formats import count_samples, format_of
from .index import INDEX_FILE
from .shards import Shard, _token_total

__all__ = ["hf_dataset_files", "stream_hf_dataset"]

_STATE = "state.json"  # what save_to_disk writes beside its data files: their names, in order
_MAX_STATE_BYTES = 16 * 2**20


def stream_hf_dataset(dataset: Any, **stream_arguments: Any) -> ShardedStream:
    """A resumable, window-shuffled stream of a Hugging Face dataset's rows (dicts of its columns).

    Args:
        dataset: A ``datasets.Dataset`` backed by files (loaded with ``load_dataset`` or ``load_from_disk``),
            or the path of a ``save_to_disk`` directory or of a directory of ``.parquet``/``.arrow`` files.
        **stream_arguments: Those of :class:`~torch_input_ckpt.ShardedStream` (``window``, ``seed``,
            ``lanes``, ``pack_to``, ``tokens``, ``transform``, ...); ``columns`` defaults to the dataset's
            column names.

    Returns:
        The stream: use it as the dataset of a :class:`~torch_input_ckpt.ResumableDataLoader`.

    Raises:
        ValueError: for a dataset whose rows are not its files' rows (naming why and the fix), or no files.
        InputStateError: for a damaged or changed file, naming it.
    """
    if isinstance(dataset, (str, os.PathLike)) and (Path(dataset) / INDEX_FILE).is_file():
        return ShardedStream(os.fspath(dataset), **stream_arguments)  # indexed: changes refused by file name
    paths, columns = hf_dataset_files(dataset)
    if columns is not None:
        stream_arguments.setdefault("columns", columns)
    field = stream_arguments.get("tokens") if stream_arguments.get("pack_to") is not None else None
    shards = [_shard(path, field) for path in paths]
    return ShardedStream(shards, **stream_arguments)


def hf_dataset_files(dataset: Any) -> tuple[list[str], list[str] | None]:
    """The files holding ``dataset``'s rows, in its order, and its columns (None for a directory: all).

    Raises:
        ValueError: as :func:`stream_hf_dataset`.
    """
    if isinstance(dataset, (str, os.PathLike)):
        return _directory_files(Path(dataset)), None
    import datasets

    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise ValueError(f"a DatasetDict of splits {list(dataset)}: stream one split, e.g. ds[{next(iter(dataset))!r}]")
    if not isinstance(dataset, datasets.Dataset):
        raise ValueError(
            f"expected a datasets.Dataset or a directory of its files (got {type(dataset).__name__}); an "
            "IterableDataset streams from its source: give its Parquet files' directory instead"
        )
    return _dataset_files(dataset), list(dataset.column_names)


def _dataset_files(dataset: Any) -> list[str]:
    fix = "call ds = ds.flatten_indices() (writes the rows in order), or ds.save_to_disk(DIR) and stream DIR"
    if hf_dataset_has_indices(dataset):
        raise ValueError(f"the dataset reads its rows through an indices mapping (select, shuffle, filter, ...): {fix}")
    if dataset.format["type"] is not None:
        raise ValueError(
            f"the dataset has format {dataset.format['type']!r} (with_format or set_transform): the stream gives "
            "rows as dicts of Python values; call ds.reset_format() and pass your function as transform="
        )
    paths = [entry["filename"] for entry in dataset.cache_files]
    if not paths:
        raise ValueError(
            "the dataset is held in memory (no cache files: Dataset.from_dict, from_list, ...): write it with "
            "ds.save_to_disk(DIR) or ds.to_parquet(...) and stream that directory"
        )
    rows = sum(count_samples(path) for path in paths)
    if rows != dataset.num_rows:
        raise ValueError(
            f"the dataset holds {dataset.num_rows} rows of its files' {rows} ({len(paths)} files, e.g. "
            f"{paths[0]}): a part of them (select, shard); {fix}"
        )
    return paths


def _directory_files(root: Path) -> list[str]:
    if root.is_file() and getattr(format_of(root.name), "columnar", False):
        return [os.fspath(root)]  # one Parquet or Arrow file
    if not root.is_dir():
        raise ValueError(f"{root}: not a directory of Parquet or Arrow files, nor one such file")
    state = root / _STATE
    if state.is_file():  # a save_to_disk directory: its data files, in the order it lists them
        names = _listed_files(state)
    else:
        names = sorted(entry.name for entry in root.iterdir() if getattr(format_of(entry.name), "columnar", False))
    if not names:
        raise ValueError(f"{root}: no .parquet or .arrow files (and no {_STATE} listing them)")
    return [os.fspath(root / name) for name in names]


def _listed_files(state: Path) -> list[str]:
    """The data file names a ``save_to_disk`` directory's ``state.json`` lists, checked as plain file names."""
    with open(state, "rb") as file:
        data = file.read(_MAX_STATE_BYTES + 1)
    try:
        listed = json.loads(data) if len(data) <= _MAX_STATE_BYTES else None
        names = [entry["filename"] for entry in listed["_data_files"]]  # type: ignore[index]
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(
            f"{state}: not the state.json save_to_disk writes (at most {_MAX_STATE_BYTES} bytes, with _data_files "
            f"[{{'filename': ...}}]): {type(error).__name__}: {error}"
        ) from None
    for name in names:
        if not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", ".."):
            raise ValueError(f"{state}: data file name {name!r} is not a plain file name in its directory")
        if not getattr(format_of(name), "columnar", False):
            raise ValueError(f"{state}: data file {name!r} is not a .arrow or .parquet file")
    return names


def _shard(path: str, field: Any) -> Shard:
    tokens = _token_total(Path(path), field) if field is not None else None
    return Shard(path, count_samples(path), tokens)
