"""Check that your own dataset resumes exactly, with the check this library's own tests use.

Two datasets with a random augmentation: one draws from NumPy's global RNG, which the loader reseeds per sample,
so a resumed run equals the uninterrupted one; the other keeps its own ``np.random.Generator`` on ``self``, which
no loader state holds, and the check says which samples came back with other values.

    python examples/testing_own_dataset.py
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

from torch_input_ckpt import ResumableDataLoader
from torch_input_ckpt.testing import assert_equal_output_after_checkpoint


class Augmented(Dataset):
    """Sample ``i`` with a random crop offset drawn from NumPy's global RNG (reseeded per sample)."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, index: int) -> dict[str, int]:
        return {"id": index, "offset": int(np.random.randint(0, 1000))}


class OwnGenerator(Augmented):
    """The same, drawing from a generator the dataset owns: its position is in no state."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)

    def __getitem__(self, index: int) -> dict[str, int]:
        return {"id": index, "offset": int(self.rng.integers(0, 1000))}


def loader(dataset: Dataset, num_workers: int = 0) -> ResumableDataLoader:
    return ResumableDataLoader(dataset, batch_size=4, shuffle=True, seed=3, num_workers=num_workers)


def ids(batch: dict) -> list[int]:
    return batch["id"]


# Stops at the start, after one batch, mid-epoch, at the epoch's end and into epoch 2; each state goes through the
# checkpoint file and into a fresh loader.
run = assert_equal_output_after_checkpoint(lambda: loader(Augmented()), epochs=2, ids=ids)
print(f"Augmented: {len(run)} batches over 2 epochs, resumed exactly at every stop")

# The state saved with 0 workers, restored into a loader with 2: the same run.
assert_equal_output_after_checkpoint(
    lambda: loader(Augmented()), 4, resume_with=lambda: loader(Augmented(), num_workers=2), expected=run, ids=ids
)
print("Augmented: resumed with 2 workers after 4 batches, the same run")

try:
    assert_equal_output_after_checkpoint(lambda: loader(OwnGenerator()), epochs=2, ids=ids)
except AssertionError as error:
    print("OwnGenerator:", error)
