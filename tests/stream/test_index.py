"""The shard index under hostile and faulty input (issue 21 case 9, issue 22): a checksum, checked values and
bounds, atomic writes, symbolic links, and the `index` command's one-line errors and exit codes."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from torch_input_ckpt import InputCheckpointer, InputStateError, ResumableDataLoader, ShardedStream
from torch_input_ckpt.cli.main import main
from torch_input_ckpt.stream.shards import write_index

from tests.support.stream_data import ids_collate, write_shards

INDEX = "torch_input_ckpt_index.json"


def signed(body: dict) -> bytes:
    """An index file as the spec says: the body plus ``sha256`` of its canonical JSON (sorted keys, compact)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    return json.dumps({**body, "sha256": hashlib.sha256(canonical).hexdigest()}, indent=1).encode()


def edit(root: Path, change, sign: bool = True) -> None:
    """Change the index of ``root`` by hand; ``sign`` recomputes its checksum (a forger, or a bug of ours)."""
    path = root / INDEX
    body = json.loads(path.read_text())
    claimed = body.pop("sha256", None)
    change(body)
    path.write_bytes(signed(body) if sign else json.dumps({**body, "sha256": claimed}, indent=1).encode())


@pytest.fixture
def root(tmp_path):
    path = write_shards(tmp_path / "shards", "jsonl", (3, 2, 4))
    write_index(path, "tokens")
    return path


# -- checksum, values, duplicates, bounds ------------------------------------------------------------------


def test_a_hand_edited_index_is_refused_naming_it_and_the_fix(root):
    edit(root, lambda body: body["shards"].append(dict(body["shards"][0])), sign=False)  # every sample twice
    with pytest.raises(InputStateError, match=rf"{INDEX}: checksum mismatch.*Re-run `python -m torch_input_ckpt index"):
        ShardedStream(root)


def test_an_index_without_a_checksum_is_refused(root):
    body = json.loads((root / INDEX).read_text())
    body.pop("sha256", None)
    (root / INDEX).write_text(json.dumps(body))  # as older versions wrote it
    with pytest.raises(InputStateError, match=rf"{INDEX}: the index has no checksum.*Re-run"):
        ShardedStream(root)


def test_duplicate_entries_are_refused_even_when_signed(root):
    edit(root, lambda body: body["shards"].append(dict(body["shards"][1])))
    with pytest.raises(
        InputStateError, match=r"shards\[3\]\.name='shard-001.jsonl' is listed twice \(also shards\[1\]\)"
    ):
        ShardedStream(root)


BAD_VALUES = [
    ("count", 10**30, r"shards\[1\]\.count=1000000000000000000000000000000 \(expected an integer from 0 to 2814"),
    ("tokens", -50, r"shards\[1\]\.tokens=-50 \(expected an integer from 0 to"),
    ("name", "shard-\x00.jsonl", r"shards\[1\]\.name='shard-\\x00.jsonl' \(expected the file name of a shard"),
    ("name", "../escape.jsonl", r"shards\[1\]\.name='../escape.jsonl' \(expected the file name"),
    ("size", "12", r"shards\[1\]\.size='12' \(expected an integer"),
    ("mtime_ns", 1.5, r"shards\[1\]\.mtime_ns=1.5 \(expected an integer"),
    ("count", True, r"shards\[1\]\.count=True \(expected an integer"),
    ("digest", "beef", r"shards\[1\]\.digest='beef' \(expected 64 lowercase hex digits\)"),
]


@pytest.mark.parametrize("key,value,message", BAD_VALUES, ids=[f"{k}={v!r}"[:30] for k, v, _ in BAD_VALUES])
def test_index_values_are_checked_naming_file_entry_value_and_expectation(root, key, value, message):
    edit(root, lambda body: body["shards"][1].__setitem__(key, value))
    with pytest.raises(InputStateError, match=rf"{INDEX}: {message}"):
        ShardedStream(root)


def test_wrong_index_shapes_are_named(root):
    edit(root, lambda body: body.__setitem__("shards", {"0": 1}))
    with pytest.raises(InputStateError, match=r"shards=\{'0': 1\} \(expected a list of entries\)"):
        ShardedStream(root)
    edit(root, lambda body: body.__setitem__("shards", [7]))
    with pytest.raises(InputStateError, match=r"shards\[0\]=7 \(expected an object with keys"):
        ShardedStream(root)
    edit(root, lambda body: body.__setitem__("shards", [{"name": "x.jsonl"}]))
    with pytest.raises(InputStateError, match=r"shards\[0\] has keys \['name'\] \(expected"):
        ShardedStream(root)


def test_index_bounds_are_checked_before_the_work(root, monkeypatch):
    path = root / INDEX
    with open(path, "r+b") as file:  # sparse: 257 MiB that take no disk
        file.truncate(257 * 1024 * 1024)
    with pytest.raises(InputStateError, match=rf"{INDEX}: 269484032 bytes, more than the bound of 268435456 bytes"):
        ShardedStream(root)
    write_index(root, "tokens")
    monkeypatch.setattr("torch_input_ckpt.stream.index.MAX_INDEX_SHARDS", 2)
    with pytest.raises(InputStateError, match=r"3 shard entries, more than the bound of 2"):
        ShardedStream(root)


# -- atomic writes -------------------------------------------------------------------------------------------


def test_index_never_writes_through_a_planted_symlink(root, monkeypatch):
    victim = root.parent / "victim.txt"
    victim.write_text("precious")
    (root / f".{INDEX}.tmp").symlink_to(victim)  # the fixed temporary name of earlier versions
    drawn = iter(["planted", "fresh"])  # and a symlink at the first random name drawn
    monkeypatch.setattr("torch_input_ckpt.store.files._random_token", lambda: next(drawn))
    (root / f".{INDEX}.tmp-planted").symlink_to(victim)
    write_index(root, "tokens")
    assert victim.read_text() == "precious"
    assert (root / INDEX).is_file() and not (root / INDEX).is_symlink()
    assert len(ShardedStream(root)) == 9


def test_concurrent_index_runs_both_succeed_and_a_reader_never_sees_a_partial_index(root):
    errors: list[BaseException] = []
    done = threading.Event()

    def writer():
        try:
            for _ in range(40):
                write_index(root, "tokens")
        except BaseException as error:  # noqa: BLE001 (collected, asserted below)
            errors.append(error)

    def reader():
        while not done.is_set():
            try:
                assert len(ShardedStream(root)) == 9
            except BaseException as error:  # noqa: BLE001
                errors.append(error)
                return

    threads = [threading.Thread(target=writer), threading.Thread(target=writer)]
    watcher = threading.Thread(target=reader)
    for thread in [*threads, watcher]:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    done.set()
    watcher.join(timeout=60)
    assert not errors, errors[:3]
    assert not [p.name for p in root.iterdir() if ".tmp" in p.name], "no temporary left behind"


# -- symbolic links --------------------------------------------------------------------------------------------


def _link_all(data: Path, blobs: Path, relative_to: Path) -> None:
    """Move every shard of ``data`` into ``blobs`` (under content-like names) and link it back."""
    shards = sorted(data.iterdir())
    blobs.mkdir(parents=True, exist_ok=True)
    for path in shards:
        blob = blobs / hashlib.sha256(path.name.encode()).hexdigest()
        path.rename(blob)
        path.symlink_to(os.path.relpath(blob, relative_to))


def _resume_through_the_file(root: Path, checkpoints: Path) -> None:
    def make():
        return ResumableDataLoader(ShardedStream(root, lanes=2, seed=4, window=2), batch_size=2, collate_fn=ids_collate)

    expected = list(make())
    before = make()
    it = iter(before)
    first = [next(it), next(it)]
    with InputCheckpointer(checkpoints, before) as ckpt:
        ckpt.save(2)
    del it
    after = make()
    with InputCheckpointer(checkpoints, after) as ckpt:
        ckpt.restore()
    assert first + list(after) == expected


def test_symlinked_shards_inside_the_directory_work(tmp_path):
    data = write_shards(tmp_path / "data", "jsonl", (3, 0, 5))
    _link_all(data, data / "blobs", data)
    assert main(["index", str(data), "--tokens", "tokens"]) == 0
    _resume_through_the_file(data, tmp_path / "ckpt")


def test_a_hugging_face_hub_cache_works(tmp_path):
    repo = tmp_path / "hub" / "datasets--org--corpus"
    data = write_shards(repo / "snapshots" / "0123abcd" / "data", "jsonl", (4, 2, 3))
    _link_all(data, repo / "blobs", data)  # snapshots/<rev>/data/x.jsonl -> ../../../blobs/<sha>
    write_index(data, "tokens")
    _resume_through_the_file(data, tmp_path / "ckpt")


def test_a_link_out_of_the_data_directory_is_refused_naming_link_and_target(tmp_path, capsys):
    data = write_shards(tmp_path / "data", "jsonl", (3, 2))
    outside = write_shards(tmp_path / "elsewhere", "jsonl", (3, 2))
    (data / "shard-001.jsonl").unlink()
    (data / "shard-001.jsonl").symlink_to(outside / "shard-001.jsonl")
    assert main(["index", str(data)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{data / 'shard-001.jsonl'}: a symbolic link to {outside / 'shard-001.jsonl'}, outside the data" in err
    (data / "shard-001.jsonl").unlink()
    (data / "shard-001.jsonl").symlink_to("shard-000.jsonl")  # inside: indexed
    write_index(data)
    (data / "shard-001.jsonl").unlink()
    (data / "shard-001.jsonl").symlink_to(outside / "shard-001.jsonl")  # swapped after indexing
    with pytest.raises(InputStateError, match=r"shard-001.jsonl: a symbolic link to .*elsewhere/shard-001.jsonl"):
        ShardedStream(data)


def test_a_fifo_named_like_a_shard_is_refused_not_skipped_or_waited_on(tmp_path):
    data = write_shards(tmp_path / "data", "jsonl", (3,))
    os.mkfifo(data / "shard-009.jsonl")
    with pytest.raises(InputStateError, match=r"shard-009.jsonl: shard is a FIFO, not a regular file"):
        write_index(data)
    os.mkfifo(tmp_path / "rows.npy")
    code = (
        "import sys\nfrom torch_input_ckpt import ShardedStream, InputStateError\n"
        "try:\n    ShardedStream([sys.argv[1]])\nexcept InputStateError as error:\n    print(error)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "rows.npy")], capture_output=True, text=True, timeout=60
    )
    assert "rows.npy: shard is a FIFO, not a regular file" in done.stdout, done.stderr[-2000:]


# -- the command -------------------------------------------------------------------------------------------


TOKENIZER = """
def encode(sample):
    return list(sample["id"].encode())

def broken(sample):
    raise KeyError("no vocabulary loaded")

NOT_CALLABLE = 3
"""


@pytest.fixture
def tokenizer_module(tmp_path, monkeypatch):
    (tmp_path / "my_tokenizer.py").write_text(TOKENIZER)
    monkeypatch.chdir(tmp_path)
    yield "my_tokenizer"
    sys.modules.pop("my_tokenizer", None)


def test_index_command_counts_with_a_tokenizer(root, tokenizer_module, capsys):
    assert main(["index", str(root), "--tokenizer", f"{tokenizer_module}:encode"]) == 0
    out = capsys.readouterr().out
    ids = [f"{s}-{k}" for s, n in enumerate((3, 2, 4)) for k in range(n)]
    assert (
        f"indexed 3 shards, 9 samples, {sum(len(i) for i in ids)} tokens (from tokenizer 'my_tokenizer:encode')" in out
    )
    index = json.loads((root / INDEX).read_text())
    assert (index["tokenizer"], index["tokens_field"]) == ("my_tokenizer:encode", None)


COMMAND_ERRORS = [
    (["--tokens", "id"], r"shard-000.jsonl: sample 0: field 'id' gives text \(3 characters\), not token ids"),
    (["--tokenizer", "my_tokenizer"], r"--tokenizer 'my_tokenizer': expected module:callable"),
    (
        ["--tokenizer", "no_such_module_xyz:f"],
        r"--tokenizer 'no_such_module_xyz:f': cannot load it \(ModuleNotFoundError",
    ),
    (["--tokenizer", "my_tokenizer:NOT_CALLABLE"], r"int is not callable"),
    (
        ["--tokenizer", "my_tokenizer:broken"],
        r"shard-000.jsonl: sample 0: cannot take its tokens with tokenizer my_tokenizer:broken \(KeyError",
    ),
    (
        ["--tokens", "tokens", "--tokenizer", "my_tokenizer:encode"],
        r"give --tokens tokens or --tokenizer my_tokenizer:encode, not both",
    ),
]


@pytest.mark.parametrize("options,message", COMMAND_ERRORS, ids=[" ".join(o)[:40] for o, _ in COMMAND_ERRORS])
def test_index_command_errors_are_one_line_with_exit_code_2(root, tokenizer_module, capsys, options, message):
    assert main(["index", str(root), *options]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("torch-input-ckpt: error: "), err
    assert re.search(message, err), err


def test_index_command_on_a_missing_directory_or_a_file(tmp_path, capsys):
    assert main(["index", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err == f"torch-input-ckpt: error: {tmp_path / 'missing'} does not exist\n"
    (tmp_path / "file").write_text("")
    assert main(["index", str(tmp_path / "file")]) == 2
    assert capsys.readouterr().err == f"torch-input-ckpt: error: {tmp_path / 'file'} is not a directory\n"


def test_the_installed_command_imports_a_tokenizer_from_the_working_directory(root, tmp_path):
    (tmp_path / "tok_cli.py").write_text(TOKENIZER)  # -P: the working directory is not on sys.path, as for
    # the installed `torch-input-ckpt` script
    done = subprocess.run(
        [sys.executable, "-P", "-c", "import sys; from torch_input_ckpt.cli.main import main; sys.exit(main())",
         "index", str(root), "--tokenizer", "tok_cli:encode"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "tokens (from tokenizer 'tok_cli:encode')" in done.stdout


def _bad_tar(path: Path) -> None:
    path.write_bytes(b"not a tar archive" * 40)


def _truncated_gzip(path: Path) -> None:
    path.write_bytes(gzip.compress(b'{"tokens": [1, 2]}\n' * 200)[:60])


def _corrupt_gzip(path: Path) -> None:
    data = bytearray(gzip.compress(b'{"tokens": [1, 2]}\n' * 200))
    data[20:30] = b"\xff" * 10
    path.write_bytes(bytes(data))


def _scalar_npy(path: Path) -> None:
    np.save(path, np.int64(7))


def _bad_line(path: Path) -> None:
    path.write_text('{"tokens": [1]}\n' * 499 + "{'not json'}\n")


DAMAGED = [
    ("bad.tar", _bad_tar),
    ("cut.jsonl.gz", _truncated_gzip),
    ("garbled.jsonl.gz", _corrupt_gzip),
    ("scalar.npy", _scalar_npy),
    ("line500.jsonl", _bad_line),
]


@pytest.mark.parametrize("name,damage", DAMAGED, ids=[n for n, _ in DAMAGED])
def test_index_command_names_a_damaged_shard_in_one_line(tmp_path, capsys, name, damage):
    data = write_shards(tmp_path / "data", "jsonl", (2, 3))
    damage(data / name)
    assert main(["index", str(data), "--tokens", "tokens"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"torch-input-ckpt: error: {data / name}: "), err
