"""A lock "file" that is a FIFO, the lock-takeover warning's location, and the restore line after a skip."""

from __future__ import annotations

import json
import logging
import os

import pytest

from torch_input_ckpt import InputCheckpointer, InputCheckpointWarning, ResumableDataLoader, ResumableSampler


def test_a_fifo_at_the_lock_name_is_a_named_error_with_the_path_and_the_fix(tmp_path):
    """Before: a bare "OSError: [Errno 22] Invalid argument" naming no path."""
    lock = tmp_path / "input_0.lock"
    os.mkfifo(lock)
    with pytest.raises(ValueError, match="is a FIFO") as raised:
        InputCheckpointer(tmp_path, ResumableSampler(10))
    assert str(lock) in str(raised.value) and f"rm {lock}" in str(raised.value)


def test_the_lock_takeover_warning_points_at_the_callers_line(tmp_path):
    """Before: at a line inside lock.py (stacklevel counted from the wrong frame)."""
    (tmp_path / "input_0.lock").write_text(json.dumps({"pid": 2**22 + 7, "host": "another-host"}))
    with pytest.warns(InputCheckpointWarning, match="taking over the writer lock") as caught:
        ckpt = InputCheckpointer(tmp_path, ResumableSampler(10))  # the line the warning must name
    ckpt.close()
    (warning,) = [w for w in caught if issubclass(w.category, InputCheckpointWarning)]
    assert warning.filename == __file__


def test_the_restore_line_after_a_skip_names_both_steps(tmp_path, caplog):
    """Before: "at step 5" with step 7's position."""
    loader = ResumableDataLoader(list(range(40)), batch_size=2, shuffle=True, seed=1)
    stream = iter(loader)
    with InputCheckpointer(tmp_path, loader, every_n_steps=5) as ckpt:
        for step in range(1, 6):
            next(stream)
            ckpt.after_step(step)
    fresh = ResumableDataLoader(list(range(40)), batch_size=2, shuffle=True, seed=1)
    with caplog.at_level(logging.WARNING, logger="torch_input_ckpt"), InputCheckpointer(tmp_path, fresh) as ckpt:
        assert ckpt.restore(5, skip_steps=2, batches_per_step=1) == 7
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("restored input pipeline")]
    assert "at step 5, skipped to step 7, epoch 0, position 14" in line, line
