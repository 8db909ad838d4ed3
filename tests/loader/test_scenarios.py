"""Two of the new-user trials of issue 11 as resume-equivalence tests on real files: a language model over
a NumPy memmap with NumPy jitter and a time schedule (model steps pinned), and a stateful IterableDataset
over 8 JSON-lines shard files with 2 workers. (The other two, image-like augmentation with 2 workers under
SIGKILL and Lightning's ModelCheckpoint(every_n_train_steps=5), are test_sigkill.py, test_quickstart.py and
test_lightning.py.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from torch_input_ckpt import InputCheckpointer, ResumableDataLoader

from tests.support.resume import check_resume, epochs_of, release, to_py

WINDOW = 16


class TokenWindows(Dataset):
    """Windows of a token file read through np.memmap, each with a NumPy jitter (a random offset)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tokens: np.memmap | None = None

    def __len__(self) -> int:
        return int(np.load(self.path, mmap_mode="r").shape[0]) // WINDOW - 1

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.tokens is None:  # opened in the process that reads (each worker its own map)
            self.tokens = np.load(self.path, mmap_mode="r")
        offset = int(np.random.randint(0, WINDOW))  # the jitter
        start = index * WINDOW + offset
        return {"index": index, "offset": offset, "tokens": torch.from_numpy(np.array(self.tokens[start : start + 4]))}


def _token_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.npy"
    np.save(path, np.arange(64 * WINDOW, dtype=np.int32))
    return path


def test_a_language_model_over_a_memmap_with_numpy_jitter_resumes_exactly(tmp_path):
    path = _token_file(tmp_path)

    def make() -> ResumableDataLoader:
        return ResumableDataLoader(TokenWindows(path), batch_size=4, shuffle=True, seed=3, num_workers=2)

    expected = check_resume(make, 5, epochs=2)
    for stop in (15, 16, 21):  # the epoch has 16 batches
        check_resume(make, stop, epochs=2, expected=expected)
    offsets = [o for _, batch in expected for o in batch["offset"]]
    assert len(set(offsets)) > 1, "the jitter draws differ between samples"


def test_every_n_seconds_with_a_model_step_resumes_from_the_model_checkpoint(tmp_path):
    """A time schedule (one save every 3 fake seconds, 1 s per step), model checkpoints every 7 steps
    pinned by the same after_step call, keep_last=1: a rollback to the model step 7 is exact."""
    path = _token_file(tmp_path)
    clock = [0.0]

    def make() -> ResumableDataLoader:
        return ResumableDataLoader(TokenWindows(path), batch_size=4, shuffle=True, seed=3, num_workers=0)

    uninterrupted = [b for _, b in epochs_of(make(), 2)]
    loader = make()
    stream = epochs_of(loader, 2)
    with InputCheckpointer(tmp_path / "ckpt", loader, every_n_seconds=3, keep_last=1, clock=lambda: clock[0]) as ckpt:
        for step in range(1, 20):
            next(stream)
            clock[0] += 1.0
            ckpt.after_step(step, pin=step % 7 == 0)
        assert ckpt.pinned() == [7, 14]
    stream.close()
    del loader
    release()
    resumed = make()
    with InputCheckpointer(tmp_path / "ckpt", resumed, every_n_seconds=3, clock=lambda: clock[0]) as ckpt:
        assert ckpt.restore(7) == 7
    assert [b for _, b in epochs_of(resumed, 2)] == uninterrupted[7:]


class JsonlShards(IterableDataset):
    """Reads JSON-lines shard files, dealt to workers round-robin; its state is this copy's (shard, line)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.epoch = 0
        self.shard = self.line = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.shard, self.line = epoch, 0, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "shard": self.shard, "line": self.line}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.shard, self.line = state["epoch"], state["shard"], state["line"]

    def __iter__(self):
        info = get_worker_info()
        mine = self.paths[(0 if info is None else info.id) :: 1 if info is None else info.num_workers]
        return self._records(mine)

    def _records(self, mine: list[Path]):
        while self.shard < len(mine):
            lines = mine[self.shard].read_text().splitlines()
            while self.line < len(lines):
                record = json.loads(lines[self.line])
                self.line += 1
                yield {**record, "noise": torch.rand(()).item()}
            self.shard, self.line = self.shard + 1, 0


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_stateful_iterable_over_8_jsonl_shards_resumes_exactly_with_its_draws(tmp_path, num_workers):
    paths = []
    for shard in range(8):
        path = tmp_path / f"shard-{shard:02d}.jsonl"
        path.write_text("".join(json.dumps({"shard": shard, "line": i}) + "\n" for i in range(3 + shard % 3)))
        paths.append(path)

    def make() -> ResumableDataLoader:
        return ResumableDataLoader(JsonlShards(paths), batch_size=3, num_workers=num_workers)

    expected = check_resume(make, 4, epochs=1)
    for stop in (1, 7):
        check_resume(make, stop, epochs=1, expected=expected)
    seen = sorted((s, i) for _, batch in expected for s, i in zip(batch["shard"], batch["line"], strict=True))
    assert seen == sorted((s, i) for s in range(8) for i in range(3 + s % 3)), "every line once"
    assert to_py(expected[0][1])["noise"] != to_py(expected[1][1])["noise"]
