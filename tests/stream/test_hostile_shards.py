"""Shard files under attack and failure: small files that would need gigabytes, files that are not files, damaged
files, and tokens that are not integers give one ``InputStateError`` naming the file, the line or sample number and
what was expected — before the work, both when ``index`` counts a shard and when training reads it."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from torch_input_ckpt import InputStateError, ResumableDataLoader, Shard, ShardedStream
from torch_input_ckpt.stream.formats import (
    LINE_CHARS_ENV,
    MAX_LINE_CHARS,
    MAX_MEMBER_BYTES,
    MEMBER_BYTES_ENV,
    count_samples,
    open_samples,
)
from torch_input_ckpt.stream.shards import write_index

from tests.support.stream_data import deliver_all, ids_collate, write_shards

REPO = Path(__file__).resolve().parents[2]
GiB = 2**30


# -- files that need gigabytes: in a child with RLIMIT_AS, under a timeout --------------------------------------


def sparse_tar(path: Path, real_size: int) -> Path:
    """A tar of one small sample, then a GNU sparse member of ``real_size`` bytes (one 512-byte block stored)."""
    data = b'{"id": "web-0"}'
    head = io.BytesIO()
    with tarfile.open(fileobj=head, mode="w", format=tarfile.GNU_FORMAT) as archive:
        info = tarfile.TarInfo("web/00000.json")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    first = head.getvalue()[: 2 * tarfile.BLOCKSIZE]  # its header and data block, without the end blocks
    info = tarfile.TarInfo("web/00001.bin")
    info.type, info.size = tarfile.GNUTYPE_SPARSE, tarfile.BLOCKSIZE
    header = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    header[386:398] = tarfile.itn(real_size - tarfile.BLOCKSIZE, 12, tarfile.GNU_FORMAT)  # the one data region
    header[398:410] = tarfile.itn(tarfile.BLOCKSIZE, 12, tarfile.GNU_FORMAT)
    header[483:495] = tarfile.itn(real_size, 12, tarfile.GNU_FORMAT)  # the expanded size
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header[: tarfile.BLOCKSIZE])
    path.write_bytes(first + bytes(header[: tarfile.BLOCKSIZE]) + b"z" * tarfile.BLOCKSIZE + bytes(1024))
    return path


def huge_line_gzip(path: Path, line_bytes: int) -> Path:
    """A ``.jsonl.gz`` whose one line is ``line_bytes`` long: gzip members of 16 MiB of ``x`` repeated (~1 MB)."""
    chunk = 16 * 2**20
    filler = gzip.compress(b"x" * chunk, compresslevel=9)
    with open(path, "wb") as out:
        out.write(gzip.compress(b'{"text": "'))
        for _ in range(line_bytes // chunk):
            out.write(filler)
        out.write(gzip.compress(b'"}\n'))
    return path


CHILD = """
import resource, sys
from torch_input_ckpt import InputStateError
from torch_input_ckpt.stream.formats import count_samples, open_samples

limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
for path in sys.argv[2:]:
    for what, call in (("index", count_samples), ("read", lambda p: list(open_samples(p)))):
        try:
            call(path)
        except InputStateError as error:
            print(what, "refused:", error, flush=True)
        else:
            print(what, "accepted", path, flush=True)
"""


@pytest.mark.slow
def test_sparse_tar_member_and_huge_gzip_line_are_refused_within_3_gib(tmp_path):
    tar = sparse_tar(tmp_path / "web.tar", 10 * GiB)
    jsonl = huge_line_gzip(tmp_path / "code.jsonl.gz", GiB)
    assert tar.stat().st_size < 10_000 and jsonl.stat().st_size < 2_000_000
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(3 * GiB), str(tar), str(jsonl)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    member = f"{tar}: member 'web/00001.bin' holds {10 * GiB} bytes (sparse members count their full size), "
    member += f"more than the bound of {MAX_MEMBER_BYTES} bytes"
    line = f"{jsonl}: line 1 is longer than the bound of {MAX_LINE_CHARS} characters"
    assert [x.split(":", 1)[0] for x in lines] == ["index refused", "read refused"] * 2, lines
    assert all(member in x for x in lines[:2]) and all(line in x for x in lines[2:]), lines


def test_the_bounds_are_set_by_environment_variables_and_checked_at_index_and_read(tmp_path, monkeypatch):
    long_line = tmp_path / "web.jsonl"
    long_line.write_text('{"n": 1}\n' + json.dumps({"text": "y" * 5000}) + "\n")
    big_member = tmp_path / "code.tar"
    with tarfile.open(big_member, "w") as archive:
        for name, data in (("c/0.txt", b"short"), ("c/1.txt", b"z" * 3000)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    assert count_samples(str(long_line)) == 2 and count_samples(str(big_member)) == 2
    monkeypatch.setenv(LINE_CHARS_ENV, "1000")
    monkeypatch.setenv(MEMBER_BYTES_ENV, "2000")
    line = re.escape(f"{long_line}: line 2 is longer than the bound of 1000 characters")
    member = re.escape(f"{big_member}: member 'c/1.txt' holds 3000 bytes") + ".*bound of 2000 bytes"
    for path, match in ((long_line, line), (big_member, member)):
        with pytest.raises(InputStateError, match=match):
            count_samples(str(path))
        with pytest.raises(InputStateError, match=match):
            list(open_samples(str(path), 1))
    monkeypatch.setenv(LINE_CHARS_ENV, "lots")
    with pytest.raises(ValueError, match=f"{LINE_CHARS_ENV}='lots' is not a bound: expected an int >= 1"):
        count_samples(str(long_line))


# -- files that are not regular files: refused before opening (np.load would block on a FIFO) ----------------


def unblock_after(fifo: Path, seconds: float) -> threading.Thread:
    """Open the FIFO for writing after ``seconds`` and close it: a reader that blocked on it then returns (so a
    broken check fails this test instead of hanging it)."""

    def write() -> None:
        time.sleep(seconds)
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK) if _has_reader(fifo) else None
        if fd is not None:
            os.close(fd)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def _has_reader(fifo: Path) -> bool:
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:  # ENXIO: nobody is reading
        return False
    return True


@pytest.mark.parametrize("suffix", [".npy", ".jsonl", ".jsonl.gz", ".tar"])
def test_a_fifo_shard_is_refused_before_opening(tmp_path, suffix):
    fifo = tmp_path / f"web{suffix}"
    os.mkfifo(fifo)
    unblock_after(fifo, 5.0)
    started = time.monotonic()
    match = re.escape(f"{fifo}: shard is a FIFO, not a regular file")
    with pytest.raises(InputStateError, match=match):
        count_samples(str(fifo))
    with pytest.raises(InputStateError, match=match):
        list(open_samples(str(fifo)))
    if suffix == ".npy":  # a path given directly: counted from its header at construction
        with pytest.raises(InputStateError, match=match):
            ShardedStream([fifo])
    assert time.monotonic() - started < 4.0, "the check must not wait for a writer"


def test_a_device_or_directory_shard_is_refused(tmp_path):
    device = tmp_path / "web.npy"
    device.symlink_to("/dev/null")
    with pytest.raises(InputStateError, match=re.escape(f"{device}: shard is a character device")):
        ShardedStream([device])
    folder = tmp_path / "code.jsonl"
    folder.mkdir()
    with pytest.raises(InputStateError, match=re.escape(f"{folder}: shard is a directory")):
        count_samples(str(folder))


# -- damaged files: named by file, line or sample, and what was expected ---------------------------------------


def _jsonl_with_bad_line_500(path: Path) -> None:
    lines = [json.dumps({"n": k}) for k in range(600)]
    lines[499] = "{n: 499}"
    path.write_text("\n".join(lines) + "\n")


def _deep(path: Path) -> None:
    path.write_text('{"n": 0}\n' + "[" * 200_000 + "]" * 200_000 + "\n")


def _truncated_gzip(path: Path) -> None:
    path.write_bytes(gzip.compress(b"".join(b'{"n": %d}\n' % k for k in range(300)))[:-20])


def _corrupt_gzip(path: Path) -> None:
    body = bytearray(gzip.compress(b"".join(b'{"n": %d}\n' % k for k in range(300))))
    body[30:40] = b"\xff" * 10
    path.write_bytes(bytes(body))


def _not_utf8(path: Path) -> None:
    path.write_bytes(b'{"n": 0}\n{"n": "\xff\xfe"}\n')


def _bad_tar(path: Path) -> None:
    path.write_bytes(b"this is not a tar archive\n" * 40)


def _tar_bytes(records: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for k in range(records):
            data = json.dumps({"n": k}).encode()
            info = tarfile.TarInfo(f"web/{k:05d}.json")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _tar_cut_at_a_header(path: Path) -> None:
    path.write_bytes(_tar_bytes(6)[: 4 * 1024])  # 2 whole samples (header + data block each), no end blocks


def _tar_with_a_damaged_header(path: Path) -> None:
    body = bytearray(_tar_bytes(6))
    body[3 * 1024 + 100 : 3 * 1024 + 108] = b"garbage!"  # sample 3's header: its checksum no longer matches
    path.write_bytes(bytes(body))


def _tar_with_bad_json_member(path: Path) -> None:
    body = bytearray(_tar_bytes(4))
    at = body.index(b'{"n": 2}')
    body[at : at + 8] = b'{"n": 2,'
    path.write_bytes(bytes(body))


def _npy_0d(path: Path) -> None:
    np.save(path, np.array(5))


def _npy_of_empty_rows(path: Path) -> None:
    with open(path, "wb") as out:  # a header alone: 10**10 rows of 0 columns need no data bytes
        np.lib.format.write_array_header_1_0(out, {"descr": "<i8", "fortran_order": False, "shape": (10**10, 0)})


def _npy_truncated(path: Path) -> None:
    np.save(path, np.arange(40, dtype=np.int64).reshape(10, 4))
    path.write_bytes(path.read_bytes()[:-50])


DAMAGED = {
    "invalid JSON at line 500": (
        "web.jsonl",
        _jsonl_with_bad_line_500,
        r"web\.jsonl: line 500 \(sample 499\): not valid JSON \(Expecting property name.*expected one JSON value",
    ),
    "deep nesting": ("web.jsonl", _deep, r"web\.jsonl: line 2 \(sample 1\): nested too deeply to decode"),
    "truncated gzip": ("web.jsonl.gz", _truncated_gzip, r"web\.jsonl\.gz: line \d+ cannot be read \(EOFError"),
    "corrupt gzip": ("web.jsonl.gz", _corrupt_gzip, r"web\.jsonl\.gz: line 1 cannot be read \((error|BadGzipFile)"),
    "not UTF-8": ("web.jsonl", _not_utf8, r"web\.jsonl: line 2 cannot be read \(bytes that are not UTF-8 at char"),
    "not a tar": ("web.tar", _bad_tar, r"web\.tar: not a tar archive .*expected a complete tar archive"),
    "tar cut at a header": ("web.tar", _tar_cut_at_a_header, r"web\.tar: no end-of-archive block at byte 4096"),
    "tar header damaged": ("web.tar", _tar_with_a_damaged_header, r"web\.tar: no end-of-archive block at byte 3072"),
    "0-d npy": ("web.npy", _npy_0d, r"web\.npy: a 0-d array \(shape \(\)\); expected a \.npy array of 1 or more"),
    "npy of 10**10 empty rows": (
        "web.npy",
        _npy_of_empty_rows,
        r"web\.npy: 10000000000 samples of 0 bytes each \(dtype <i8, shape \(10000000000, 0\)\)",
    ),
    "truncated npy": ("web.npy", _npy_truncated, r"web\.npy: not a readable \.npy array .*mmap length"),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_a_damaged_shard_is_named_at_index_and_at_read(tmp_path, case):
    name, write, match = DAMAGED[case]
    root = tmp_path / "corpus"
    root.mkdir()
    write(root / name)
    with pytest.raises(InputStateError, match=match):
        count_samples(str(root / name))
    with pytest.raises(InputStateError, match=match):
        write_index(root)
    with pytest.raises(InputStateError, match=match):
        list(open_samples(str(root / name)))


def test_a_damaged_tar_member_is_named_with_its_sample(tmp_path):
    path = tmp_path / "web.tar"
    _tar_with_bad_json_member(path)
    assert count_samples(str(path)) == 4  # headers are intact: the count reads no member data
    with pytest.raises(InputStateError, match=r"web\.tar: member 'web/00002\.json' \(sample 2\) cannot be decoded"):
        list(open_samples(str(path)))


def test_a_tar_npy_member_claiming_more_data_than_it_holds_is_refused_before_allocating(tmp_path):
    header = io.BytesIO()  # a header alone: np.load would allocate the 80 GB it claims, then find no data
    np.lib.format.write_array_header_1_0(header, {"descr": "<i8", "fortran_order": False, "shape": (10**10,)})
    path = tmp_path / "web.tar"
    with tarfile.open(path, "w") as archive:
        info = tarfile.TarInfo("web/00000.tokens.npy")
        info.size = len(header.getvalue())
        archive.addfile(info, io.BytesIO(header.getvalue()))
    assert count_samples(str(path)) == 1
    match = r"web\.tar: member 'web/00000\.tokens\.npy' \(sample 0\) cannot be decoded as \.tokens\.npy "
    match += r"\(its header claims 80000000000 bytes of data \(shape \(10000000000,\)\), it holds 0\)"
    with pytest.raises(InputStateError, match=match):
        list(open_samples(str(path)))


def corrupt_line_in_place(path: Path, line: int) -> None:
    """Replace ``:`` with ``;`` on one line (same size), and put the modification time back."""
    before = path.stat()
    lines = path.read_text().splitlines(keepends=True)
    lines[line - 1] = lines[line - 1].replace(":", ";", 1)
    path.write_text("".join(lines))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_malformed_line_read_in_training_names_file_and_line(tmp_path, workers):
    root = write_shards(tmp_path / "corpus", "jsonl", (5, 11, 4))
    write_index(root)
    victim = root / "shard-001.jsonl"
    corrupt_line_in_place(victim, 7)
    stream = ShardedStream(root, lanes=2, seed=3)
    loader = ResumableDataLoader(stream, batch_size=2, collate_fn=ids_collate, num_workers=workers, seed=5)
    with pytest.raises(InputStateError) as raised:
        deliver_all(loader)
    # With workers, torch re-raises the error's type in the main process with the worker's message in it.
    assert f"{victim}: line 7 (sample 6): not valid JSON" in str(raised.value)


# -- tokens: never truncated, never in the wrong byte order ------------------------------------------------------


def test_float_npy_tokens_are_refused_not_truncated(tmp_path):
    path = tmp_path / "web.npy"
    np.save(path, np.array([[1.5, 2.7, 3.9], [4.2, 5.5, 6.6]], dtype=np.float32))
    stream = ShardedStream([path], pack_to=4, shuffle=False)
    match = re.escape(f"{path}: rows 0..1: tokens must be integers (found dtype float32)")
    with pytest.raises(InputStateError, match=match):
        list(ResumableDataLoader(stream, batch_size=1))


def test_float_json_tokens_are_refused_not_truncated(tmp_path):
    path = tmp_path / "code.jsonl"
    path.write_text('{"tokens": [1, 2, 3]}\n{"tokens": [4.5, 5.0]}\n')
    stream = ShardedStream([Shard(str(path), 2, 5)], pack_to=2, tokens="tokens", shuffle=False)
    with pytest.raises(
        InputStateError, match=re.escape(f"{path}: sample 1: tokens must be integers (found dtype float64)")
    ):
        list(ResumableDataLoader(stream, batch_size=1))


def test_big_endian_npy_tokens_pack_exactly(tmp_path):
    rows = np.arange(1, 13, dtype=np.int64).reshape(4, 3) + 40_000
    path = tmp_path / "math.npy"
    np.save(path, rows.astype(">i4"))
    stream = ShardedStream([path], pack_to=5, shuffle=False)
    packed = [batch["input_ids"].reshape(-1) for batch in ResumableDataLoader(stream, batch_size=1)]
    flat = np.concatenate([p.numpy() for p in packed])[: rows.size]
    assert flat.tolist() == rows.reshape(-1).tolist()
