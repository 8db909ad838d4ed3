"""Under a real gloo process group (3 ranks): a recorded run, a restore with skip_steps on 3 ranks, and
``samples`` computed afterwards from the directory alone equals what every rank delivered."""

from __future__ import annotations

from pathlib import Path

from torch_input_ckpt import InputCheckpointer, ResumableDataLoader
from torch_input_ckpt.provenance.history import Provenance

from tests.support.distributed import run_world


def _train(rank: int, world: int, directory: str, steps: int, skip: int) -> dict[int, list[int]]:
    loader = ResumableDataLoader(list(range(29)), batch_size=2, shuffle=True, seed=5, collate_fn=list)
    delivered = {}
    with InputCheckpointer(directory, loader, every_n_steps=4, keep_last=None) as ckpt:
        done = ckpt.restore(skip_steps=skip) if skip else (ckpt.restore_or_save_initial() or 0)
        batches = (b for _ in range(100) for b in loader)
        for step in range(done + 1, steps + 1):
            delivered[step] = list(next(batches))
            ckpt.after_step(step)
        batches.close()
    return delivered


def test_samples_after_a_skip_under_gloo(tmp_path):
    directory = str(tmp_path)
    first = run_world(_train, 3, directory, 10, 0)  # saved at 0, 4, 8; stopped after 10
    second = run_world(_train, 3, directory, 25, 3)  # from 8, skipping 9..11 (saved at once at 11)
    provenance = Provenance(Path(directory))
    assert provenance.configuration()["skipped_steps"] == [[9, 11]]
    for step in range(1, 26):
        answer = provenance.step(step)
        truth = first if step <= 10 else second
        if 9 <= step <= 11:
            assert answer.skipped and step not in second[0]
            if step <= 10:
                assert all(answer.keys[r] == first[r][step] for r in range(3))
            continue
        assert all(answer.keys[r] == truth[r][step] for r in range(3)), f"step {step}"
