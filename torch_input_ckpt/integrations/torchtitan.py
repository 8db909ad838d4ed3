"""torchtitan integration: ``ResumableTitanDataLoader``, a torchtitan ``BaseDataLoader`` whose state resumes exactly
once on the same or another data-parallel degree.

torchtitan's trainer builds its loader with ``config.dataloader.build(dp_world_size=, dp_rank=, tokenizer=,
seq_len=, local_batch_size=, snapshot_every_n_steps=)`` and its ``CheckpointManager`` saves it under the key
``"dataloader"`` with ``dcp.save``/``dcp.async_save`` (calling ``state_dict()`` on every rank together) and loads it
with ``dcp.load``. torchtitan's own ``ParallelAwareDataloader`` stores one pickled ``StatefulDataLoader`` state per
``dp_rank_<r>`` and refuses another degree; this loader stores every data-parallel rank's state in one replicated
value (:class:`~torch_input_ckpt.checkpoint.dcp.DistributedLoaderState`), so another degree splits what is left.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset
from torchtitan.components.dataloader import BaseDataLoader
from torchtitan.components.loss import IGNORE_INDEX

from ..checkpoint.dcp import DistributedLoaderState
from ..loader.dataloader import ResumableDataLoader
from ..loader.sampler import ResumableSampler
from ..stream.dataset import ShardedStream

__all__ = ["ResumableTitanDataLoader", "TitanCollate"]


class TitanCollate:
    """Makes torchtitan's ``(input_dict, labels)`` from samples of ``seq_len + 1`` token ids.

    A sample is a sequence of token ids (list, array, tensor), or a packed sequence of a
    :class:`~torch_input_ckpt.ShardedStream` (``{"input_ids", "position_ids", "document_ids"}``): its padding and
    the target of a document's last token (the next document's first) are labelled ``IGNORE_INDEX``, and its
    positions restart at each document, as torchtitan's own text loader does.

    Raises:
        ValueError: for a sample that is not ``seq_len + 1`` tokens long, naming its length.
    """

    def __init__(self, seq_len: int) -> None:
        self.seq_len = seq_len

    def __call__(self, samples: list[Any]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        packed = isinstance(samples[0], dict)
        tokens = torch.stack([self._tokens(s["input_ids"] if packed else s) for s in samples])
        inputs, labels = tokens[:, :-1], tokens[:, 1:].clone()
        if not packed:
            return {"input": inputs}, labels
        documents = torch.stack([torch.as_tensor(s["document_ids"]) for s in samples])
        labels[(documents[:, 1:] != documents[:, :-1]) | (documents[:, 1:] < 0)] = IGNORE_INDEX
        positions = torch.stack([torch.as_tensor(s["position_ids"]) for s in samples])[:, :-1]
        return {"input": inputs, "positions": positions}, labels

    def _tokens(self, sample: Any) -> torch.Tensor:
        tokens = torch.as_tensor(sample, dtype=torch.int64).reshape(-1)
        if tokens.numel() != self.seq_len + 1:
            raise ValueError(
                f"a sample of {tokens.numel()} tokens; torchtitan's loader needs seq_len + 1 = {self.seq_len + 1} "
                "(inputs and the labels shifted by one)"
            )
        return tokens


class ResumableTitanDataLoader(BaseDataLoader):
    """A torchtitan data loader over a map-style dataset, a ``Mixture`` or a packed ``ShardedStream``, keyed by
    data-parallel rank only, whose checkpoint resumes exactly once on the same or another data-parallel degree.

    Set it as ``Trainer.Config.dataloader = ResumableTitanDataLoader.Config(...)``; torchtitan's trainer builds
    it and its ``CheckpointManager`` saves and loads it. Ranks with the same ``dp_rank`` (tensor-, context- and
    pipeline-parallel peers) get the same batches and hold the same state, stored once.

    Args:
        config: The dataset and loader settings (:class:`ResumableTitanDataLoader.Config`).
        dp_world_size: The data-parallel degree (torchtitan's ``batch_degree``).
        dp_rank: This rank's data-parallel rank.
        tokenizer: torchtitan's tokenizer, handed to ``config.dataset``'s factory.
        seq_len: The training sequence length: each sample is ``seq_len + 1`` tokens.
        local_batch_size: Samples per batch on this rank.
        snapshot_every_n_steps: Accepted for torchtitan's call and unused: the state is a position, taken at any
            step without snapshots.
        dataset: A dataset object instead of ``config.dataset``/``config.dataset_path`` (from Python).

    Raises:
        ValueError: for no dataset, both ``dataset`` and ``dataset_path``, or a rank outside the degree.
    """

    @dataclass(kw_only=True, slots=True)
    class Config(BaseDataLoader.Config):
        """The loader's settings; ``dataset`` or ``dataset_path`` names the data.

        Attributes:
            dataset: ``"module:callable"``, a factory ``f(tokenizer=, seq_len=)`` returning a map-style dataset,
                a ``Mixture`` or a ``ShardedStream`` whose samples are ``seq_len + 1`` token ids.
            dataset_path: A directory of indexed shard files: a ``ShardedStream`` packed to ``seq_len + 1``
                tokens, read from each document's ``tokens_field``.
            tokens_field: The documents' token field (None: the sample is its tokens, as an ``.npy`` row).
            seed: The order's and the samples' RNG seed.
            shuffle: Whether each epoch is permuted.
            infinite: Start the next epoch at the end of one (False: the loader ends after one epoch).
            num_workers: Loader worker processes.
            persistent_workers: Keep the workers between epochs.
            pin_memory: Pin batches' memory.
            prefetch_factor: Batches each worker prepares ahead (None: torch's default).
            in_order: Deliver batches in order (False: as workers finish; resumable on the same degree only).
        """

        tokens_field: str | None = "tokens"
        seed: int = 0
        shuffle: bool = True
        infinite: bool = True
        num_workers: int = 0
        persistent_workers: bool = False
        pin_memory: bool = False
        prefetch_factor: int | None = None
        in_order: bool = True

    def __init__(
        self,
        config: Config,
        *,
        dp_world_size: int,
        dp_rank: int,
        tokenizer: Any = None,
        seq_len: int,
        local_batch_size: int,
        snapshot_every_n_steps: int | None = None,
        dataset: Dataset | None = None,
    ) -> None:
        self.config = config
        self.dp_rank, self.dp_world_size = dp_rank, dp_world_size
        data = _dataset(config, dataset, tokenizer, seq_len)
        sampler = ResumableSampler(
            data, shuffle=config.shuffle, seed=config.seed, num_replicas=dp_world_size, rank=dp_rank
        )
        workers = config.num_workers
        #: The :class:`~torch_input_ckpt.ResumableDataLoader` underneath (its sampler splits over the DP ranks).
        self.loader = ResumableDataLoader(
            data,
            batch_size=local_batch_size,
            sampler=sampler,
            num_workers=workers,
            collate_fn=TitanCollate(seq_len),
            pin_memory=config.pin_memory,
            persistent_workers=config.persistent_workers and workers > 0,
            prefetch_factor=config.prefetch_factor if workers > 0 else None,
            in_order=config.in_order,
            seed=config.seed,
        )
        self._state = DistributedLoaderState(
            self.loader, rank=dp_rank, world_size=dp_world_size, name=f"dataloader (dp_rank {dp_rank})"
        )

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        """``(input_dict, labels)`` batches, epoch after epoch (one epoch unless ``config.infinite``)."""
        while True:
            yield from self.loader
            if not self.config.infinite:
                return

    def state_dict(self) -> dict[str, Any]:
        """Every data-parallel rank's position in one value (collective: torchtitan calls it on every rank)."""
        return self._state.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """This rank's position, or on another data-parallel degree its share of what is left.

        Raises:
            InputStateError: for a state that cannot be split over this degree (e.g. saved with
                ``in_order=False`` and batches delivered out of order), naming both degrees.
        """
        self._state.load_state_dict(state_dict)


def _dataset(config: ResumableTitanDataLoader.Config, given: Dataset | None, tokenizer: Any, seq_len: int) -> Any:
    """The dataset ``config`` (or the caller) names."""
    named = [what for what in ("dataset", "dataset_path") if getattr(config, what)]
    if given is not None:
        if named:
            raise ValueError(f"a dataset object was given and the config names one too ({named[0]}): give one")
        return given
    if len(named) != 1:
        raise ValueError(
            "ResumableTitanDataLoader.Config needs exactly one of dataset ('module:callable') or dataset_path "
            f"(a shard directory); got dataset={config.dataset!r}, dataset_path={config.dataset_path!r}"
        )
    if config.dataset_path:
        return ShardedStream(
            config.dataset_path,
            seed=config.seed,
            shuffle=config.shuffle,
            pack_to=seq_len + 1,
            tokens=config.tokens_field,
        )
    module, _, name = config.dataset.partition(":")
    if not module or not name:
        raise ValueError(f"dataset={config.dataset!r} should be 'module:callable', e.g. 'my_data:build'")
    factory = getattr(importlib.import_module(module), name)
    return factory(tokenizer=tokenizer, seq_len=seq_len)
