"""Checkpoint files under attack and failure: damaged, hostile (re-signed) and racing files are skipped with a
reason, never crash restore or ``inspect``, never leak what a symlink points to; failed writes are never silent."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from torch_input_ckpt import InputCheckpointer, InputCheckpointWarning, InputStateError, ResumableSampler
from torch_input_ckpt.__main__ import main
from torch_input_ckpt.store import files
from torch_input_ckpt.store.files import InputFile
from torch_input_ckpt.store.planner import plan_restore

REPO = Path(__file__).resolve().parents[2]
SECRET = "TOP-SECRET-0123456789 do not print me"


def save_steps(directory: Path, steps=(1, 2, 3), keep_last=None) -> dict[int, dict]:
    """A sampler checkpointed at ``steps`` (one batch of 4 per step); its state at each step."""
    sampler = ResumableSampler(4000, seed=1)
    stream, states = iter(sampler), {}
    with InputCheckpointer(directory, sampler, every_n_steps=1, keep_last=keep_last) as ckpt:
        for step in steps:
            for _ in range(4):
                next(stream)
            ckpt.save(step)
            states[step] = sampler.state_dict()
    return states


def sign(body: bytes) -> bytes:
    """A file body signed exactly as the library signs it (so it reaches the checks behind the checksum)."""
    return b'{"sha256":"' + hashlib.sha256(body).hexdigest().encode() + b'",' + body[1:] + b"\n"


def resign(path: Path, change=None, edit=None) -> None:
    """Rewrite ``path`` after ``change(doc)`` and/or a raw ``edit(bytes)`` of its canonical body, re-signed."""
    doc = json.loads(path.read_bytes())
    doc.pop("sha256")
    if change is not None:
        change(doc)
    body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    path.write_bytes(sign(edit(body) if edit is not None else body))


def _set(key, value):
    return lambda doc: doc.update({key: value})


def _cursor(value: bytes):
    return lambda body: re.sub(rb'"cursor":\d+', b'"cursor":' + value, body)


HOSTILE = {
    "5000-digit integer": (lambda p: resign(p, edit=_cursor(b"9" * 5000)), "an integer of 5000 digits"),
    "10**400 num_replicas": (
        lambda p: resign(p, edit=lambda b: b.replace(b'"num_replicas":1', b'"num_replicas":1' + b"0" * 400)),
        "an integer of 401 digits",
    ),
    "nested 900 deep": (
        lambda p: resign(p, edit=_cursor(b"[" * 900 + b"]" * 900)),
        "nested more than 64 levels deep",
    ),
    "nested 100000 deep": (lambda p: resign(p, edit=_cursor(b"[" * 100000 + b"]" * 100000)), "not valid JSON"),
    "sparse 40 GB": (lambda p: os.truncate(p, 40 * 2**30), f"more than the bound of {files.MAX_FILE_BYTES} bytes"),
    "over the size bound": (
        lambda p: resign(p, edit=lambda b: b.replace(b'"external":[]', b'"external":["' + b"x" * 2**26 + b'"]')),
        f"more than the bound of {files.MAX_FILE_BYTES} bytes",
    ),
    "wall_time NaN": (lambda p: resign(p, _set("wall_time", float("nan"))), "wall_time=nan is not a time"),
    "wall_time Infinity": (lambda p: resign(p, _set("wall_time", float("inf"))), "wall_time=inf is not a time"),
    "wall_time 1e300": (lambda p: resign(p, _set("wall_time", 1e300)), "wall_time=1e+300 is not a time"),
    "version true": (lambda p: resign(p, _set("version", True)), "file format version True is not supported"),
    "world_size 0": (lambda p: resign(p, _set("world_size", 0)), "world_size=0 is out of range"),
    "rank beyond world": (lambda p: resign(p, _set("world_size", 1), lambda b: b), "rank=0"),
    "step true": (lambda p: resign(p, _set("step", True)), "step=True has the wrong type"),
    "external not strings": (lambda p: resign(p, _set("external", [1])), "should be a list of strings"),
    "duplicate keys": (
        lambda p: resign(p, edit=lambda b: b.replace(b'"step":3', b'"step":3,"step":3')),
        "duplicate key 'step'",
    ),
    "num_replicas -3": (
        lambda p: resign(p, edit=lambda b: b.replace(b'"num_replicas":1', b'"num_replicas":-3')),
        "component 'input': num_replicas=-3",
    ),
    "num_replicas true": (
        lambda p: resign(p, edit=lambda b: b.replace(b'"num_replicas":1', b'"num_replicas":true')),
        "component 'input': num_replicas=True",
    ),
    "epoch beyond bound": (
        lambda p: resign(p, edit=lambda b: b.replace(b'"epoch":0', b'"epoch":' + str(2**62 + 1).encode())),
        "component 'input': epoch=",
    ),
    "not canonical": (lambda p: resign(p, edit=lambda b: b.replace(b'"step":3', b'"step": 3')), "checksum mismatch"),
}
# "rank beyond world" keeps rank 0 < world 1, so it must stay valid: a control that the checks are not too wide.
VALID = {"rank beyond world"}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_newest_file_is_skipped_by_restore_and_reported_by_inspect(tmp_path, kind, capsys):
    states = save_steps(tmp_path)
    newest = tmp_path / InputFile(0, 3).name
    damage, reason = HOSTILE[kind]
    damage(newest)
    sampler = ResumableSampler(4000, seed=1)
    ckpt = InputCheckpointer(tmp_path, sampler, every_n_steps=1)
    if kind in VALID:
        assert ckpt.restore() == 3
        ckpt.close()
        return
    with pytest.warns(InputCheckpointWarning, match=re.escape(f"{newest}: ") + ".*" + re.escape(reason)):
        assert ckpt.restore() == 2
    assert sampler.state_dict() == states[2]
    with pytest.raises(InputStateError, match=re.escape(reason)):
        ckpt.restore(3)
    ckpt.close()
    capsys.readouterr()
    assert main(["inspect", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    line = next(line for line in out.splitlines() if line.startswith(f"  {newest.name}  "))
    assert "DAMAGED: " in line and reason in line
    assert "Traceback" not in out + err and len(out) < 5000  # nothing hostile echoed at length


def test_inspect_is_exit_0_1_never_a_traceback_for_a_directory_of_hostile_files(tmp_path):
    save_steps(tmp_path, steps=tuple(range(1, len(HOSTILE) + 2)))
    for step, kind in enumerate(sorted(HOSTILE), start=1):
        path = tmp_path / InputFile(0, step).name
        path.write_bytes(path.read_bytes().replace(f'"step":{step}'.encode(), b'"step":3'))
        resign(path, _set("step", 3))
        HOSTILE[kind][0](path)
    done = subprocess.run(
        [sys.executable, "-m", "torch_input_ckpt", "inspect", str(tmp_path)],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr  # the newest file is intact
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stdout.count("DAMAGED: ") >= len(HOSTILE) - len(VALID)


# -- symlinks ------------------------------------------------------------------------------------------


def test_a_symlinked_pointer_is_refused_and_its_target_never_echoed(tmp_path, capsys):
    save_steps(tmp_path / "ckpt")
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    pointer = tmp_path / "ckpt" / "checkpoint_input_0"
    pointer.unlink()
    pointer.symlink_to(secret)
    ckpt = InputCheckpointer(tmp_path / "ckpt", ResumableSampler(4000, seed=1), every_n_steps=1)
    with pytest.warns(InputCheckpointWarning, match="checkpoint_input_0: is a symbolic link") as caught:
        assert ckpt.restore() == 3
    ckpt.close()
    assert all("SECRET" not in str(w.message) for w in caught)
    capsys.readouterr()
    main(["inspect", str(tmp_path / "ckpt")])
    main(["inspect", str(tmp_path / "ckpt"), "--json"])
    out = capsys.readouterr().out
    assert "is a symbolic link" in out and "SECRET" not in out


def test_a_fifo_at_the_pointers_name_is_refused_without_hanging(tmp_path, capsys):
    save_steps(tmp_path)
    (tmp_path / "checkpoint_input_0").unlink()
    os.mkfifo(tmp_path / "checkpoint_input_0")
    with pytest.raises(InputStateError, match="checkpoint_input_0: not a regular file"):
        files.read_pointer(tmp_path, 0)
    assert main(["inspect", str(tmp_path)]) == 0
    assert "checkpoint_input_0: not a regular file" in capsys.readouterr().out


def test_inspect_marks_pinned_checkpoints(tmp_path, capsys):
    with InputCheckpointer(tmp_path, ResumableSampler(40), every_n_steps=1, keep_last=1) as ckpt:
        ckpt.save(1, pin=True)
        ckpt.save(2)
        ckpt.save(3)
    assert main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"  {InputFile(0, 1).name}  " in out and "ok  (pinned: kept until unpinned)" in out
    assert out.count("(pinned:") == 1


def test_a_garbled_pointer_is_described_by_length_and_hash_not_content(tmp_path):
    save_steps(tmp_path)
    (tmp_path / "checkpoint_input_0").write_text(SECRET)
    with pytest.raises(InputStateError, match=rf"found {len(SECRET)} bytes, sha256 [0-9a-f]{{16}}\)") as info:
        files.read_pointer(tmp_path, 0)
    assert "SECRET" not in str(info.value)


def test_a_symlinked_checkpoint_file_is_not_followed(tmp_path):
    save_steps(tmp_path / "ckpt")
    newest = tmp_path / "ckpt" / InputFile(0, 3).name
    outside = tmp_path / "outside.json"
    outside.write_bytes(newest.read_bytes())  # a valid file: still refused, since it is not in the directory
    newest.unlink()
    newest.symlink_to(outside)
    ckpt = InputCheckpointer(tmp_path / "ckpt", ResumableSampler(4000, seed=1), every_n_steps=1)
    with pytest.warns(InputCheckpointWarning, match=re.escape(f"{newest}: is a symbolic link (never followed)")):
        assert ckpt.restore() == 2
    ckpt.close()


def test_a_symlink_planted_at_the_old_predictable_temp_name_is_never_written_through(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    directory = tmp_path / "ckpt"
    ckpt = InputCheckpointer(directory, ResumableSampler(40), every_n_steps=1)
    for name in (InputFile(0, 1).name, "checkpoint_input_0"):
        (directory / f".{name}.tmp{os.getpid()}").symlink_to(victim)  # the name earlier versions used
    ckpt.save(1)
    ckpt.close()
    assert victim.read_text() == "precious"
    assert files.read_checkpoint(directory / InputFile(0, 1).name).step == 1


def test_a_planted_file_at_a_drawn_temp_name_is_left_alone_and_another_name_drawn(tmp_path, monkeypatch):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    tokens = iter(["a" * 16, "b" * 16, "c" * 16, "d" * 16])
    monkeypatch.setattr(files, "_random_token", lambda: next(tokens))
    planted = tmp_path / f".{InputFile(0, 1).name}.tmp-{'a' * 16}"
    planted.symlink_to(victim)
    files.write_atomic(tmp_path / InputFile(0, 1).name, b"new")
    assert victim.read_text() == "precious" and planted.is_symlink()
    assert (tmp_path / InputFile(0, 1).name).read_bytes() == b"new"
    assert InputFile.is_temp_of_rank(planted.name, 0)  # removed as a stale temporary at the next start


# -- a reader racing a saver --------------------------------------------------------------------------


def test_readers_racing_a_saver_at_keep_last_1_always_find_a_committed_checkpoint(tmp_path):
    """A bounded race (300 saves, keep_last=1): every read made while a committed file exists finds it."""
    sampler = ResumableSampler(10**6)
    ckpt = InputCheckpointer(tmp_path, sampler, every_n_steps=1, keep_last=1)
    ckpt.save(0)
    ckpt.flush()
    done = threading.Event()
    failures: list[str] = []
    reads = [0]

    def read_repeatedly():
        while not done.is_set():
            try:
                plan = plan_restore(tmp_path, 1)  # what restore plans
            except InputStateError as error:
                failures.append(str(error))
            else:
                if plan is None or plan.checkpoint is None:
                    failures.append(f"no plan: {plan}")
            reads[0] += 1
            report = __import__("torch_input_ckpt.cli.inspection").cli.inspection.inspect_directory(tmp_path)
            if not report["valid"] or any(not f["valid"] for f in report["ranks"][0]["files"]):
                failures.append(f"inspect: {report['ranks'][0]}")

    readers = [threading.Thread(target=read_repeatedly) for _ in range(2)]
    for reader in readers:
        reader.start()
    try:
        for step in range(1, 301):
            ckpt.save(step)
    finally:
        ckpt.close()
        done.set()
        for reader in readers:
            reader.join(timeout=60)
    assert reads[0] > 0
    assert failures == []


# -- failures that must not be silent -----------------------------------------------------------------

CHILD = """
import gc, sys
from torch_input_ckpt import InputCheckpointer, ResumableSampler
from torch_input_ckpt.store import files
def broken(path, data):
    raise OSError(28, "No space left on device (injected)")
ckpt = InputCheckpointer(sys.argv[1], ResumableSampler(10), every_n_steps=1)
ckpt.save(1)
ckpt.flush()
files.write_atomic = broken
ckpt.save(2)
if sys.argv[2] == "collect":
    del ckpt
    gc.collect()
    print("collected", flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("end", ["exit", "collect"])
def test_a_failed_write_never_raised_is_reported_on_stderr(tmp_path, end):
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path), end],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "No space left on device (injected)" in done.stderr
    assert "failed and was never raised" in done.stderr
    assert "while writing the input checkpoint of step 2 (rank 0)" in done.stderr
    if end == "collect":
        assert done.stdout == "collected\n"
        assert done.stderr.index("never raised") < len(done.stderr)  # reported at collection, not only at exit
    assert files.read_pointer(tmp_path, 0) == 1


def test_a_failed_prune_is_a_warning_naming_the_file_not_a_failed_save(tmp_path, monkeypatch, caplog):
    real = Path.unlink

    def unlink(self, missing_ok=False):
        if self.name == InputFile(0, 1).name:
            raise PermissionError(errno.EACCES, "Permission denied (injected)", str(self))
        real(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    with caplog.at_level(logging.WARNING, logger="torch_input_ckpt"):
        with InputCheckpointer(tmp_path, ResumableSampler(40), every_n_steps=1, keep_last=1) as ckpt:
            ckpt.save(1)
            ckpt.save(2)
            ckpt.flush()  # does not raise: step 2 is committed
    assert files.read_pointer(tmp_path, 0) == 2
    assert any(
        "step 2 committed" in r.message and InputFile(0, 1).name in r.message and "Permission denied" in r.message
        for r in caplog.records
    )


def test_a_raising_after_step_says_its_own_step_was_not_saved(tmp_path, monkeypatch):
    real = files.write_atomic
    monkeypatch.setattr(files, "write_atomic", lambda path, data: (_ for _ in ()).throw(OSError(5, "EIO")))
    ckpt = InputCheckpointer(tmp_path, ResumableSampler(40), every_n_steps=1)
    ckpt.save(1)
    ckpt._writer.flush()
    with pytest.raises(OSError, match="EIO") as info:
        ckpt.after_step(2)
    assert "after_step(2) raised this before deciding on a save: step 2 was not saved" in info.value.__notes__
    monkeypatch.setattr(files, "write_atomic", real)
    ckpt.close()


def test_a_background_error_is_raised_by_the_call_that_waited_for_it(tmp_path, monkeypatch):
    """A slow writer: the write of step 1 fails while save(6) waits for room in the full queue."""
    release = threading.Event()
    real_write, real_encode = files.write_atomic, files.encode_checkpoint

    def write(path, data):
        if path.name == InputFile(0, 1).name:
            release.wait(60)
            raise OSError(5, "Input/output error (injected)")
        real_write(path, data)

    def encode(**kwargs):
        if kwargs["step"] == 6:
            release.set()  # the queue holds steps 2..5; step 1's write fails now
        return real_encode(**kwargs)

    monkeypatch.setattr(files, "write_atomic", write)
    monkeypatch.setattr(files, "encode_checkpoint", encode)
    ckpt = InputCheckpointer(tmp_path, ResumableSampler(40), every_n_steps=1)
    for step in range(1, 6):
        ckpt.save(step)
    with pytest.raises(OSError, match="injected"):
        ckpt.save(6)
    ckpt.close()
    assert files.read_pointer(tmp_path, 0) == 6


# -- injected syscall faults ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "fault"),
    [("fsync", errno.EIO), ("replace", errno.EXDEV), ("replace", errno.EACCES), ("write", errno.ENOSPC)],
)
def test_an_injected_syscall_fault_surfaces_naming_the_step_and_commits_nothing(tmp_path, monkeypatch, call, fault):
    states = save_steps(tmp_path, steps=(1,))
    before = sorted(os.listdir(tmp_path))
    real = {"fsync": os.fsync, "replace": os.replace, "write": os.write}[call]

    def failing(*args):
        raise OSError(fault, os.strerror(fault) + " (injected)")

    sampler = ResumableSampler(4000, seed=1)
    ckpt = InputCheckpointer(tmp_path, sampler, every_n_steps=1)
    if call == "write":
        monkeypatch.setattr(files.os, "fdopen", lambda fd, mode: _FailingFile(fd))
    else:
        monkeypatch.setattr(files.os, call, failing)
    ckpt.save(2)
    with pytest.raises(OSError, match="injected") as info:
        ckpt.flush()
    assert "while writing the input checkpoint of step 2 (rank 0)" in "".join(info.value.__notes__)
    monkeypatch.setattr(files.os, call, real)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == before  # no temporary left, no half-committed file
    assert ckpt.restore() == 1 and sampler.state_dict() == states[1]
    ckpt.close()


class _FailingFile:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        os.close(self.fd)

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC) + " (injected)")
