"""prepare_resumable: a ResumableDataLoader under a real accelerate Accelerator stays resumable and sharded once."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration
from torch.utils.data import Dataset

from torch_input_ckpt import InputCheckpointer, ResumableDataLoader, ResumableSampler
from torch_input_ckpt.hf import AcceleratedLoader, prepare_resumable

from tests.support.distributed import run_world
from tests.support.resume import check_resume, release, to_py


class Augmented(Dataset):
    """Sample i: its id and one draw from torch's global RNG (reseeded per sample by the loader)."""

    def __init__(self, length: int = 23) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"id": index, "draw": torch.randint(0, 10**9, ())}


def _prepared(accelerator: Accelerator, workers: int = 0, length: int = 23) -> AcceleratedLoader:
    loader = ResumableDataLoader(Augmented(length), batch_size=3, shuffle=True, seed=4, num_workers=workers)
    return prepare_resumable(accelerator, loader)


def _take(loader: Any, n: int) -> list[Any]:
    out = []
    for batch in loader:
        out.append(to_py(batch))
        if len(out) == n:
            break
    return out


@pytest.mark.parametrize("stop_after", [0, 1, 4, 8, 11])  # start, one batch, mid-epoch, epoch's end, next
def test_prepared_loader_resumes_exactly(stop_after: int) -> None:
    accelerator = Accelerator(cpu=True)
    check_resume(lambda: _prepared(accelerator), stop_after, epochs=2)


def test_prepare_passes_it_through_and_its_state_is_what_the_caller_received() -> None:
    accelerator = Accelerator(cpu=True)
    prepared = _prepared(accelerator, workers=2)
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    _, _, again = accelerator.prepare(model, optimizer, prepared)
    assert again is prepared, "accelerate rebuilt the loader"
    plain = ResumableDataLoader(Augmented(), batch_size=3, shuffle=True, seed=4)
    assert _take(prepared, 5) == _take(plain, 5)
    # Its state is after the fifth batch (with its workers' prefetching), as the plain loader's.
    assert prepared.state_dict() == {**plain.state_dict(), "num_workers": 2}
    assert prepared.batches_left() == 8 - 5
    # An abandoned pass loses nothing: the next pass continues at batch 6.
    assert _take(prepared, 1) == _take(plain, 1)
    release()


def test_end_of_dataloader_is_marked_on_the_epochs_last_batch() -> None:
    accelerator = Accelerator(cpu=True)
    prepared = _prepared(accelerator)
    flags = [accelerator.gradient_state.end_of_dataloader for _ in prepared]
    assert flags == [False] * 7 + [True]
    assert not accelerator.gradient_state.in_dataloader
    assert [accelerator.gradient_state.end_of_dataloader for _ in prepared] == flags, "the next epoch too"
    _take(prepared, 5)
    resumed = _prepared(accelerator)
    resumed.load_state_dict(prepared.state_dict())
    assert [accelerator.gradient_state.end_of_dataloader for _ in resumed] == [False, False, True]


def test_save_state_and_load_state_restore_it(tmp_path: Path) -> None:
    accelerator = Accelerator(cpu=True)
    prepared = _prepared(accelerator, workers=2)
    accelerator.register_for_checkpointing(prepared)
    head = _take(prepared, 5)
    accelerator.save_state(str(tmp_path / "state"))
    # Our checkpointer beside accelerate's files: the per-rank alternative.
    with InputCheckpointer(tmp_path / "state" / "input", prepared, every_n_steps=1) as checkpointer:
        checkpointer.save(5)
    tail = [to_py(b) for b in prepared] + [to_py(b) for b in prepared]
    del prepared
    release()
    assert len(head + tail) == 5 + 3 + 8
    for restore in ("load_state", "checkpointer"):
        fresh = Accelerator(cpu=True)
        resumed = _prepared(fresh, workers=2)
        if restore == "load_state":
            fresh.register_for_checkpointing(resumed)
            fresh.load_state(str(tmp_path / "state"))
        else:
            with InputCheckpointer(tmp_path / "state" / "input", resumed, every_n_steps=1) as checkpointer:
                assert checkpointer.restore() == 5
        assert [to_py(b) for b in resumed] + [to_py(b) for b in resumed] == tail, restore
        del resumed
        release()


def _two_rank_job(rank: int, world: int, directory: str) -> dict[str, Any]:
    # Forked from the test process, whose accelerate state (a process-wide singleton) says 1 process.
    AcceleratorState._reset_state(reset_partial_state=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # else accelerate sets it, with a UserWarning
    accelerator = Accelerator(cpu=True)
    assert (accelerator.num_processes, accelerator.process_index) == (world, rank)
    prepared = _prepared(accelerator, length=26)
    assert isinstance(prepared.loader.sampler, ResumableSampler)
    accelerator.register_for_checkpointing(prepared)
    head = [b["id"] for b in _take(prepared, 2)]
    with InputCheckpointer(os.path.join(directory, "input"), prepared, every_n_steps=1) as checkpointer:
        checkpointer.save(2)
    accelerator.wait_for_everyone()  # every rank's file is durable before any rank restores
    # accelerate writes registered objects from the main process only: rank 0's state, for every rank.
    accelerator.save_state(os.path.join(directory, "state"))
    rest = [b["id"] for b in _take(prepared, 100)]
    resumed = _prepared(accelerator, length=26)
    with InputCheckpointer(os.path.join(directory, "input"), resumed, every_n_steps=1) as checkpointer:
        checkpointer.restore(2)
    from_checkpointer = [b["id"] for b in _take(resumed, 100)]
    fresh = Accelerator(cpu=True)  # as a restarted program: only the new loader registered
    resumed = _prepared(fresh, length=26)
    fresh.register_for_checkpointing(resumed)
    fresh.load_state(os.path.join(directory, "state"))
    from_state = [b["id"] for b in _take(resumed, 100)]
    return {"head": head, "rest": rest, "resumed": [from_checkpointer, from_state]}


@pytest.mark.slow
def test_two_processes_shard_once_and_resume(tmp_path: Path) -> None:
    results = run_world(_two_rank_job, 2, str(tmp_path), timeout=90)
    for result in results:
        assert result["resumed"] == [result["rest"], result["rest"]]  # checkpointer, load_state
    ids = Counter(i for r in results for batch in r["head"] + r["rest"] for i in batch)
    assert sorted(ids) == list(range(26)) and set(ids.values()) == {1}, "each sample once over the 2 ranks"


def test_unsupported_settings_are_refused() -> None:
    for config, name in (
        (DataLoaderConfiguration(split_batches=True), "split_batches=True"),
        (DataLoaderConfiguration(dispatch_batches=True), "dispatch_batches=True"),
        (DataLoaderConfiguration(even_batches=False), "even_batches=False"),
    ):
        accelerator = Accelerator(cpu=True, dataloader_config=config)
        with pytest.raises(ValueError, match=f"not supported: {name}"):
            _prepared(accelerator)
    accelerator = Accelerator(cpu=True)
    alone = ResumableDataLoader(Augmented(), sampler=ResumableSampler(23, num_replicas=2, rank=1), batch_size=3)
    with pytest.raises(ValueError, match="shards over 2 ranks as rank 1, the accelerator runs 1 processes"):
        prepare_resumable(accelerator, alone)
    with pytest.raises(ValueError, match="takes a ResumableDataLoader .got DataLoader"):
        prepare_resumable(accelerator, torch.utils.data.DataLoader(Augmented()))
