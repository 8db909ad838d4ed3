"""Bad samples (``on_error="skip"``): which errors are a sample's, and the record the loader keeps of them.

Guarantee: a sample whose fetch raises a sample's error is left out of its batch (the batch is shorter;
a batch whose samples all failed is not delivered), logged once with its key and error when the batch
that held it is delivered, and recorded in the loader's state (``"bad_samples"``): a resume neither
fetches it again in that epoch (it lies behind the position) nor logs it again. With one rank and a
:class:`~torch_input_ckpt.ResumableSampler` over a dataset without its own order, it is also excluded from
every later epoch (:meth:`~torch_input_ckpt.ResumableSampler.exclude`); otherwise (several ranks, whose
exclusion lists must agree; a ``Mixture`` or ``ShardedStream``, whose orders have none) it is skipped,
logged and recorded again in each epoch it fails. Every other sample keeps its exactly-once rule,
because the batch a key belongs to never changes. Past ``max_errors`` in one epoch the loader raises
:class:`~torch_input_ckpt.BadSampleError` with the list, before the batch that crossed the limit counts as
delivered (so a resume with a higher limit continues with it).

Errors that are not a sample's fault are never skipped (:func:`is_sample_error`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import BadSampleError, InputStateError, UnsupportedVersionError
from ..state.schema import MAX_BAD_SAMPLES, MAX_ERROR_TEXT, BadSample

__all__ = ["NOT_SKIPPED", "BadSampleLog", "describe", "is_sample_error"]

log = logging.getLogger("torch_input_ckpt")

# Raised by a fetch but not the sample's fault, so never skipped (skipping would drop a good sample for
# good): out of memory; a refusal of this library (InputStateError: e.g. a shard changed under a stream,
# whose every later sample would be wrong); an unsupported third-party version; transient I/O (a dropped
# connection or a timeout reading remote data: the sample is fine, retry the job). BaseExceptions that are
# not Exceptions (KeyboardInterrupt, SystemExit) are never caught at all.
NOT_SKIPPED: tuple[type[BaseException], ...] = (
    MemoryError,
    InputStateError,
    UnsupportedVersionError,
    ConnectionError,
    TimeoutError,
)


def is_sample_error(error: BaseException) -> bool:
    """Whether ``on_error="skip"`` skips a sample whose fetch raised ``error`` (see :data:`NOT_SKIPPED`)."""
    return isinstance(error, Exception) and not isinstance(error, NOT_SKIPPED)


def describe(error: BaseException) -> str:
    """``"TypeName: message"``, cut to the length a state keeps."""
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= MAX_ERROR_TEXT else text[: MAX_ERROR_TEXT - 3] + "..."


class BadSampleLog:
    """The main process's record of bad samples: checked, logged and stored as batches are delivered.

    Args:
        max_errors: The most bad samples one epoch may have on this rank (None: no limit).
        exclude: Called with the keys of newly bad samples of an epoch and that epoch, once their batch is
            committed (the sampler's ``exclude_after``: from the next epoch on), or None where they cannot be
            excluded.
    """

    def __init__(self, max_errors: int | None, exclude: Callable[[list[int], int], None] | None) -> None:
        self.max_errors = max_errors
        self.exclude = exclude
        self.records: list[BadSample] = []
        self._seen: set[tuple[int, int]] = set()
        self._per_epoch: Counter[int] = Counter()
        # Recorded since the last stats() call.
        self.new = 0

    def check(self, epoch: int, failures: Sequence[tuple[int, str]]) -> list[BadSample]:
        """The failures of a batch about to be delivered that are new; raises past ``max_errors``.

        Raises:
            BadSampleError: when this epoch's count would exceed ``max_errors`` (or the state's bound).
        """
        new = [BadSample(epoch, key, error) for key, error in failures if (epoch, key) not in self._seen]
        new = list({(b.epoch, b.key): b for b in new}.values())  # a padded epoch may repeat a key in one batch
        count = self._per_epoch[epoch] + len(new)
        if self.max_errors is not None and count > self.max_errors:
            listed = [b for b in self.records if b.epoch == epoch] + new
            raise BadSampleError(
                f"{count} samples failed to load in epoch {epoch}, more than max_errors={self.max_errors}: "
                f"{_listing(listed)}. Fix the data or raise max_errors; the loader's state stays at the batch "
                "before this one, so a resume continues here",
                [(b.epoch, b.key, b.error) for b in listed],
            )
        if len(self.records) + len(new) > MAX_BAD_SAMPLES:
            raise BadSampleError(
                f"more than {MAX_BAD_SAMPLES} bad samples in this run, the most a loader state records: "
                "build the dataset without them and start a new run",
                [(b.epoch, b.key, b.error) for b in new],
            )
        again = sorted({key for key, _ in failures if (epoch, key) in self._seen})
        if again:  # a key met again in the same epoch: a position padded to divide over the ranks
            log.info("skipped bad samples %s again in epoch %d (padded positions; recorded once)", again, epoch)
        return new

    def record(self, new: list[BadSample]) -> None:
        """Log, store and (where possible) exclude the bad samples of a batch just committed."""
        for bad in new:
            log.warning("skipped bad sample %d (epoch %d): %s", bad.key, bad.epoch, bad.error)
            self._seen.add((bad.epoch, bad.key))
            self._per_epoch[bad.epoch] += 1
        self.records.extend(new)
        self.new += len(new)
        if new and self.exclude is not None:
            self.exclude([bad.key for bad in new], new[0].epoch)

    def state(self) -> list[list[Any]]:
        return [bad.to_list() for bad in self.records]

    def load(self, records: list[BadSample]) -> None:
        self.records = list(records)
        self._seen = {(b.epoch, b.key) for b in records}
        self._per_epoch = Counter(b.epoch for b in records)


def _listing(bad: list[BadSample], limit: int = 20) -> str:
    shown = "; ".join(f"{b.key} ({b.error})" for b in bad[:limit])
    return shown + (f"; and {len(bad) - limit} more" if len(bad) > limit else "")
