"""A ResumableDataLoader prepared for Hugging Face Accelerate, without losing its position or its sharding.

Guarantee: ``AcceleratedLoader.state_dict()`` is the position after the last batch *the caller
received* (it fetches nothing ahead: the loader's own count of the batches left tells the epoch's
end, where accelerate's loaders look one batch ahead), so a restore resumes at exactly the next
batch; the loader keeps sharding itself over the ranks (one global cursor), so a restore on another
number of ranks continues the epoch exactly once.

Why not ``accelerator.prepare(loader)`` alone: accelerate rebuilds every ``DataLoader`` it prepares as
a new one over the same dataset, wrapping its batch sampler in a ``BatchSamplerShard`` — the
position is lost, and a ``ResumableSampler`` that already shards over the ranks would be sharded a
second time (each rank would see 1/W² of the data). :func:`prepare_resumable` wraps the loader in
an object that is not a ``DataLoader``, which ``accelerator.prepare`` then passes through unchanged.

Supported accelerate settings: ``split_batches=False``, ``dispatch_batches`` ``None``/``False`` (each
rank loads its own shard), ``even_batches=True`` (the sampler pads the epoch's tail as
``DistributedSampler`` does); the others are refused with a ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .._compat.hf import hf_dataloader_begin, hf_dataloader_end
from ..loader.dataloader import ResumableDataLoader
from ..loader.sampler import ResumableSampler

__all__ = ["AcceleratedLoader", "prepare_resumable"]


class AcceleratedLoader:
    """A :class:`ResumableDataLoader` with accelerate's device placement and gradient-state bookkeeping.

    Build it with :func:`prepare_resumable`. It moves each batch to ``device``, marks
    ``end_of_dataloader`` on the last batch of the epoch (which ``accelerator.accumulate`` reads), and
    its state is the wrapped loader's: the position after the last batch it yielded.

    Args:
        loader: The loader to wrap.
        device: Where batches are moved (``None``: left where they are).
        gradient_state: accelerate's ``GradientState`` (``None``: no bookkeeping).
        non_blocking: Passed to ``send_to_device``.
    """

    def __init__(
        self,
        loader: ResumableDataLoader,
        *,
        device: Any = None,
        gradient_state: Any = None,
        non_blocking: bool = False,
    ) -> None:
        if not isinstance(loader, ResumableDataLoader):
            raise ValueError(f"AcceleratedLoader wraps a ResumableDataLoader (got {type(loader).__name__})")
        self.loader = loader
        self.device = device
        self.gradient_state = gradient_state
        self.non_blocking = non_blocking
        # Read by accelerate's GradientState while this loader is its active dataloader.
        self.end_of_dataloader = False
        self.remainder = -1

    # -- what the Trainer and accelerate read -----------------------------------------------------

    @property
    def dataset(self) -> Any:
        """The wrapped loader's dataset."""
        return self.loader.dataset

    @property
    def batch_size(self) -> int | None:
        """The wrapped loader's (per-rank) batch size."""
        return self.loader.batch_size

    @property
    def drop_last(self) -> bool:
        """The wrapped loader's ``drop_last``."""
        return self.loader.drop_last

    @property
    def num_workers(self) -> int:
        """The wrapped loader's ``num_workers``."""
        return self.loader.num_workers

    @property
    def epoch(self) -> int:
        """The epoch the caller is in (a finished epoch counts as the next one)."""
        return self.loader.epoch

    def __len__(self) -> int:
        return len(self.loader)

    def batches_left(self) -> int:
        """Batches this rank still yields in the current epoch (the loader's ``batches_remaining``)."""
        return self.loader.batches_remaining

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning, unless it is the current epoch (then keep the position)."""
        self.loader.set_epoch(epoch)

    # -- iteration ----------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Any]:
        self.end_of_dataloader = False
        if self.gradient_state is not None:
            hf_dataloader_begin(self.gradient_state, self)
        try:
            epoch = self.loader.epoch
            for batch in self.loader:
                # After an epoch's last batch the loader's position is the next epoch's start.
                self.end_of_dataloader = self.loader.epoch != epoch or self.loader.batches_remaining == 0
                yield self._to_device(batch)
        finally:
            if self.gradient_state is not None:
                hf_dataloader_end(self.gradient_state, self)

    def _to_device(self, batch: Any) -> Any:
        if self.device is None:
            return batch
        from accelerate.utils import send_to_device  # noqa: PLC0415 - accelerate is optional

        return send_to_device(batch, self.device, non_blocking=self.non_blocking)

    # -- state --------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The wrapped loader's state: the position after the last batch yielded."""
        return self.loader.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the wrapped loader; the next ``iter()`` starts at the restored position."""
        self.loader.load_state_dict(state_dict)


def prepare_resumable(
    accelerator: Any, loader: ResumableDataLoader, *, device_placement: bool | None = None
) -> AcceleratedLoader:
    """Prepare ``loader`` for ``accelerator`` and keep it resumable and sharded once.

    Build the loader after the ``Accelerator`` (so that ``torch.distributed`` is initialised and its
    sampler shards over the ranks). The result may be passed to ``accelerator.prepare`` with the
    model and optimizer: accelerate returns it unchanged.

    Args:
        accelerator: An ``accelerate.Accelerator``.
        loader: A :class:`ResumableDataLoader` over a map-style dataset with its own sampler.
        device_placement: Move batches to ``accelerator.device``; default ``accelerator.device_placement``.

    Returns:
        The wrapped loader.

    Raises:
        ValueError: for an unsupported accelerate setting, an iterable dataset or custom sampler on
            several processes, or a loader sharded over another world than the accelerator's.
    """
    if not isinstance(loader, ResumableDataLoader):
        raise ValueError(f"prepare_resumable takes a ResumableDataLoader (got {type(loader).__name__})")
    _check_settings(accelerator)
    sampler = loader.sampler
    processes, index = int(accelerator.num_processes), int(accelerator.process_index)
    if not isinstance(sampler, ResumableSampler):
        if processes > 1:
            raise ValueError(
                "prepare_resumable on several processes needs a map-style dataset with the loader's own "
                f"ResumableSampler, which shards over the ranks (got sampler {type(sampler).__name__})"
            )
    elif (sampler.num_replicas, sampler.rank) != (processes, index):
        raise ValueError(
            f"the loader shards over {sampler.num_replicas} ranks as rank {sampler.rank}, the accelerator runs "
            f"{processes} processes as process {index}: build the ResumableDataLoader after Accelerator()"
        )
    place = accelerator.device_placement if device_placement is None else device_placement
    return AcceleratedLoader(
        loader,
        device=accelerator.device if place else None,
        gradient_state=accelerator.gradient_state,
        non_blocking=bool(getattr(accelerator, "non_blocking", False)),
    )


def _check_settings(accelerator: Any) -> None:
    refused = [
        f"{name}={value!r} (supported: {supported})"
        for name, value, ok, supported in (
            ("split_batches", accelerator.split_batches, not accelerator.split_batches, "False"),
            ("dispatch_batches", accelerator.dispatch_batches, not accelerator.dispatch_batches, "None or False"),
            ("even_batches", accelerator.even_batches, bool(accelerator.even_batches), "True"),
        )
        if not ok
    ]
    if refused:
        raise ValueError(
            "a ResumableDataLoader shards itself (each rank loads its own samples; the epoch's tail is padded "
            "as DistributedSampler pads it); accelerate settings not supported: " + ", ".join(refused)
        )
