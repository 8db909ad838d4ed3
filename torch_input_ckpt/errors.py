"""The library's exception and warning types."""

from __future__ import annotations

__all__ = [
    "BadSampleError",
    "CacheFullError",
    "EpochMismatchWarning",
    "ExternalStateWarning",
    "IncompleteCheckpointWarning",
    "InputCheckpointWarning",
    "InputStateError",
    "ObjectChangedError",
    "ObjectExistsError",
    "ObjectNotFoundError",
    "ObjectStoreError",
    "ObjectStoreUnavailableError",
    "UnseededDrawWarning",
    "UnsupportedVersionError",
]


class InputStateError(ValueError):
    """A saved input-pipeline state does not fit the pipeline it is loaded into, or is damaged.

    The message names the file (when there is one), the value found and the value expected.
    It subclasses ``ValueError`` so that callers catching ``ValueError`` keep working.
    """


class BadSampleError(RuntimeError):
    """More samples failed to load in one epoch than ``ResumableDataLoader(max_errors=...)`` allows.

    Attributes:
        samples: Every bad sample of that epoch (on this rank), as ``(epoch, key, error)``: the epoch, the
            sampler's key (a dataset index) and the error as ``"TypeName: message"``.
    """

    def __init__(self, message: str, samples: list[tuple[int, int, str]]) -> None:
        super().__init__(message)
        self.samples = samples


class CacheFullError(OSError):
    """A node's shard cache has no room for a shard it must hold: its disk is full (``ENOSPC``), or its
    ``cache_limit`` is smaller than the shards that must be on disk at once. The message names the cache
    directory, the limit, the shard and what holds the space; nothing half-written is left to be read."""


class ObjectStoreError(InputStateError):
    """An object store cannot give what was asked: no credentials, access denied, no such bucket or object.

    The message names the URL, what the store answered and what to fix (credentials, bucket, endpoint, path).
    """


class ObjectChangedError(ObjectStoreError):
    """An object is not the one recorded (its ETag or size changed since it was indexed or first read).

    Reading it would silently give other samples than the recorded order names, so it is refused; the message
    names the URL, the recorded and the found ETag and size, and the fix (re-index, or restore the object).
    """


class ObjectNotFoundError(ObjectStoreError, FileNotFoundError):
    """No object at the URL (its bucket exists). A ``FileNotFoundError`` too, so that code that looks for a file
    that may not be there yet (a checkpoint directory's newest file) can treat a store like a directory."""


class ObjectExistsError(ObjectStoreError):
    """A conditional write (``if_absent=True``) found the object already there: another writer was first."""


class ObjectStoreUnavailableError(ObjectStoreError, ConnectionError):
    """Transient failures (timeouts, 5xx, throttling, connection resets) went on past the retry bound.

    The message names the URL, the attempts, the time spent and the last failure.
    """


class InputCheckpointWarning(UserWarning):
    """Something about an input checkpoint was skipped or repaired (e.g. a damaged file)."""


class ExternalStateWarning(UserWarning):
    """Part of the pipeline has state this library cannot capture, so a resume may not be exact."""


class EpochMismatchWarning(InputCheckpointWarning):
    """``set_epoch(e)`` was called with an epoch behind a restored position (the usual off-by-one of a
    loop whose epoch counter came from elsewhere than ``loader.epoch``)."""


class IncompleteCheckpointWarning(InputCheckpointWarning):
    """A Trainer ``checkpoint-<step>`` folder was left incomplete by an interrupted save, so the resume
    goes on from the newest complete checkpoint before it (or from the start, if there is none)."""


class UnseededDrawWarning(UserWarning):
    """A sample drew from a global RNG (torch's, NumPy's or Python's) that was not seeded for it.

    Its draws depend on what ran before it, so they are not reproduced after a resume or with
    another ``num_workers``. The message names the RNG and the samples; the RNG is seeded before every
    sample from then on.
    """


class UnsupportedVersionError(RuntimeError):
    """A third-party package lacks a private API this library relies on (its version is not supported).

    Raised once, when the part is first needed (torch's at ``import torch_input_ckpt``), naming the package,
    the version found, what is missing and the version this library was written for.
    """
