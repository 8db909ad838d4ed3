"""Fuzzed shards: random bytes, truncations and mutations of valid JSON lines, gzip, tar, ``.npy``, Parquet and Arrow
shards.

The only outcomes allowed are a correct read or an ``InputStateError`` (the one error type the readers document),
within a time bound: never another exception type, never a hang, never a silent short read. "Correct" is as much as
the format can know: a count that ``index`` would record is the number of samples a read delivers (also read from
a start), a truncated shard delivers only intact samples (a prefix of the original), and a gzip shard (CRC-checked)
delivers the original samples or none. A mutated plain JSON line or ``.npy`` payload that is still well-formed is
not detectable without a content checksum, so only the count is checked there.

``make test`` runs a fixed number of examples from a fixed seed (``derandomize``); set ``HYPOTHESIS_FUZZ_EXAMPLES``
(e.g. ``HYPOTHESIS_FUZZ_EXAMPLES=20000``) for a longer run from fresh random seeds.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import io
import json
import os
import signal
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torch_input_ckpt import InputStateError
from torch_input_ckpt.stream.formats import count_samples, open_samples

FUZZ_EXAMPLES = os.environ.get("HYPOTHESIS_FUZZ_EXAMPLES")
EXAMPLES = int(FUZZ_EXAMPLES) if FUZZ_EXAMPLES else 200
SECONDS_PER_EXAMPLE = 10  # a hang is a failure, not a stuck CI job

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # the machines are shared: time is bounded by the alarm below, not by Hypothesis' deadline
    derandomize=not FUZZ_EXAMPLES,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

pytestmark = pytest.mark.fuzz


def records(n: int) -> list[dict[str, Any]]:
    names = ("web", "code", "math")
    return [{"id": f"{names[k % 3]}-{k}", "tokens": [7 * k + j for j in range(1 + k % 3)]} for k in range(n)]


def jsonl_bytes(n: int) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records(n)).encode()


def npy_bytes(n: int) -> bytes:
    out = io.BytesIO()
    np.save(out, np.arange(3 * n, dtype=np.int32).reshape(n, 3) * 11)
    return out.getvalue()


def tar_bytes(n: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for k, record in enumerate(records(n)):
            tokens = io.BytesIO()
            np.save(tokens, np.array(record["tokens"], dtype=np.int64))
            members = {"json": json.dumps({"id": record["id"]}).encode(), "tokens.npy": tokens.getvalue()}
            members["cls"] = str(k % 4).encode()
            for ext, data in members.items():
                info = tarfile.TarInfo(f"web/{k:05d}.{ext}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def records_table(n: int) -> Any:
    import pyarrow as pa

    schema = pa.schema([("id", pa.string()), ("tokens", pa.list_(pa.int64()))])
    return pa.Table.from_pylist(records(n), schema=schema)


@functools.cache  # the same 6 files for every example: writing them is not what is tested
def parquet_bytes(n: int) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = pa.BufferOutputStream()
    pq.write_table(records_table(n), out, row_group_size=2)  # several row groups: starts land in each
    return out.getvalue().to_pybytes()


@functools.cache
def arrow_bytes(n: int) -> bytes:
    """An Arrow IPC stream, as Hugging Face datasets writes its .arrow files, of record batches of 2 rows."""
    import pyarrow as pa

    table = records_table(n)
    out = pa.BufferOutputStream()
    with pa.ipc.new_stream(out, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=2):
            writer.write_batch(batch)
    return out.getvalue().to_pybytes()


VALID = {
    ".jsonl": jsonl_bytes,
    ".jsonl.gz": lambda n: gzip.compress(jsonl_bytes(n), mtime=0),
    ".npy": npy_bytes,
    ".tar": tar_bytes,
    ".parquet": parquet_bytes,
    ".arrow": arrow_bytes,
}


@st.composite
def damaged(draw: Any, suffix: str) -> tuple[str, bytes, bytes]:
    """``(how, original, damaged)``: random bytes (after a valid prefix, to get past the magic), a truncation,
    or a few byte edits (set, insert, delete) of a valid shard of 0 to 5 samples."""
    valid = VALID[suffix](draw(st.integers(0, 5)))
    how = draw(st.sampled_from(["random", "truncate", "mutate"]))
    if how == "random":
        keep = draw(st.sampled_from([0, 10, 128, 512]))
        return how, valid, valid[:keep] + draw(st.binary(max_size=1500))
    if how == "truncate":
        return how, valid, valid[: draw(st.integers(0, len(valid)))]
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        edit = draw(st.sampled_from(["set", "insert", "delete"]))
        chunk = draw(st.binary(min_size=1, max_size=4))
        if edit == "insert":
            data[at:at] = chunk
        elif edit == "delete":
            del data[at : at + len(chunk)]
        else:
            data[at : at + len(chunk)] = chunk
    return how, valid, bytes(data)


class Hang(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    def alarm(signum: int, frame: Any) -> None:
        raise Hang(f"a read took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def plain(value: Any) -> Any:
    """A sample as comparable plain values (arrays by dtype, shape and values)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return ("array", value.dtype.str, value.shape, value.tolist())
    return value


def outcome(path: str, start: int = 0) -> tuple[int | None, list[Any] | None, list[Any] | None]:
    """``(count, samples, samples from start)``; None where an ``InputStateError`` was raised. Any other exception
    propagates and fails the test."""
    results: list[Any] = []
    for call in (count_samples, lambda p: list(open_samples(p)), lambda p: list(open_samples(p, start))):
        try:
            results.append(call(path))
        except InputStateError:
            results.append(None)
    count, samples, rest = results
    return (
        count,
        None if samples is None else [plain(s) for s in samples],
        None if rest is None else [plain(s) for s in rest],
    )


def check(suffix: str, case: tuple[str, bytes, bytes], start: int) -> None:
    how, valid, data = case
    with tempfile.TemporaryDirectory() as folder:
        original, path = Path(folder, "orig" + suffix), Path(folder, "web" + suffix)
        original.write_bytes(valid)
        path.write_bytes(data)
        expected = [plain(s) for s in open_samples(str(original))]
        with time_limit(SECONDS_PER_EXAMPLE):
            count, samples, rest = outcome(str(path), start)
    if count is not None and samples is not None:
        assert len(samples) == count, f"{how}: index would record {count} samples, a read delivers {len(samples)}"
    if samples is not None and rest is not None:
        assert rest == samples[start:], f"{how}: a read from sample {start} is not the rest of a full read"
    if samples is not None and how == "truncate":
        assert samples == expected[: len(samples)], f"{how}: a truncated shard delivered samples that are not intact"
    if samples is not None and suffix == ".jsonl.gz" and how == "mutate":
        assert samples == expected, "a damaged gzip stream (CRC-checked) delivered other samples"


@pytest.mark.parametrize("suffix", list(VALID))
def test_fuzzed_shards_read_correctly_or_raise_a_named_error(suffix):
    @FUZZ
    @given(case=damaged(suffix), start=st.integers(0, 6))
    def run(case: tuple[str, bytes, bytes], start: int) -> None:
        check(suffix, case, start)

    run()
