"""Real shard files for the stream tests: JSON lines (plain and gzip), .npy token arrays, webdataset tars.

Every sample names itself: ``"<shard>-<k>"`` (its shard's number and its number in the shard), and its
tokens are ``1000 * shard + 10 * k + j`` for ``j < length``, so a delivered token says where it came from.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

# Uneven shards: an empty one, one shorter than a batch, one much longer than the others.
SIZES = (7, 0, 2, 13, 5, 9, 1, 6)
ROW = 3  # tokens per .npy row


def doc_length(shard: int, k: int) -> int:
    return 1 + (shard + 2 * k) % 5


def tokens(shard: int, k: int, length: int) -> list[int]:
    return [1000 * shard + 10 * k + j for j in range(length)]


def write_shards(root: Path, kind: str, sizes: tuple[int, ...] = SIZES) -> Path:
    """Write one shard per size in ``root`` in format ``kind`` (jsonl, jsonl.gz, npy, tar); return ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for shard, size in enumerate(sizes):
        path = root / f"shard-{shard:03d}.{kind}"
        if kind == "npy":
            rows = [tokens(shard, k, ROW) for k in range(size)]
            np.save(path, np.array(rows, dtype=np.int64).reshape(size, ROW))
        elif kind == "tar":
            _write_tar(path, shard, size)
        else:
            lines = "".join(json.dumps(_record(shard, k)) + "\n" for k in range(size))
            if kind == "jsonl.gz":
                path.write_bytes(gzip.compress(lines.encode()))
            else:
                path.write_text(lines)
    return root


def _record(shard: int, k: int) -> dict[str, Any]:
    return {"id": f"{shard}-{k}", "tokens": tokens(shard, k, doc_length(shard, k))}


def _write_tar(path: Path, shard: int, size: int) -> None:
    with tarfile.open(path, "w") as archive:
        for k in range(size):
            record = _record(shard, k)
            members = {
                "json": json.dumps({"id": record["id"]}).encode(),
                "tokens.json": json.dumps(record["tokens"]).encode(),
            }
            for ext, data in members.items():
                info = tarfile.TarInfo(f"s{shard}/{k:05d}.{ext}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))


def sample_id(sample: Any) -> str:
    """The ``"<shard>-<k>"`` name of a delivered sample of any format."""
    if isinstance(sample, dict) and "id" in sample:
        return sample["id"]
    if isinstance(sample, dict):  # tar: {"__key__", "json", "tokens.json"}
        return sample["json"]["id"]
    first = int(np.asarray(sample).reshape(-1)[0])  # .npy row
    return f"{first // 1000}-{(first % 1000) // 10}"


def tokens_field(kind: str) -> str | None:
    return {"npy": None, "tar": "tokens.json"}.get(kind, "tokens")


def ids_collate(samples: list[Any]) -> list[str]:
    return [sample_id(s) for s in samples]


def all_ids(sizes: tuple[int, ...] = SIZES) -> list[str]:
    return [f"{s}-{k}" for s, n in enumerate(sizes) for k in range(n)]


def deliver_all(loader: Any) -> list[Any]:
    """Every batch of one pass of ``loader``.

    When the pass raises, torch's iterator is released before the error goes on: left to a later gc pass
    (the traceback's frames hold it), its queues may be closed first, and torch then waits 5 s per worker to
    join them (10 s a test with 2 workers)."""
    delivered = []
    batches = iter(loader)
    try:
        for batch in batches:
            delivered.append(batch)
    except Exception as error:
        del batches
        raise error.with_traceback(None) from None
    return delivered
