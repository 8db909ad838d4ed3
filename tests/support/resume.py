"""The one resume-equivalence helper every test uses: stop a real stream, round-trip its state,
restore into a fresh object, continue, and compare with an uninterrupted run."""

from __future__ import annotations

import gc
import json
import tempfile
import weakref
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from torch_input_ckpt import files
from torch_input_ckpt.encoding import decode_tensors


def to_py(batch: Any) -> Any:
    """A batch as plain Python values, so that streams compare with ==."""
    if isinstance(batch, torch.Tensor):
        return batch.tolist()
    if isinstance(batch, dict):
        return {k: to_py(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return [to_py(v) for v in batch]
    return batch


def roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    """Serialise a state as a checkpoint does and read it back as a restore does: through the checkpoint
    file format itself (``files.encode_checkpoint``: canonical JSON, sorted keys, a checksum), written to
    a real file and read with ``files.read_checkpoint`` (which validates its schema), tensors decoded.

    Never only through memory: a state whose meaning depends on dict order (or that holds something
    JSON cannot) must fail here as it fails for a user restoring from the file.
    """
    assert json.loads(json.dumps(state)) == state, "state is not plain JSON"
    with tempfile.TemporaryDirectory(prefix="roundtrip-") as directory:
        path = Path(directory) / files.InputFile(0, 0).name
        path.write_bytes(files.encode_checkpoint(rank=0, world_size=1, step=0, states={"input": state}, external=[]))
        checkpoint = files.read_checkpoint(path)
    return decode_tensors(checkpoint.states["input"], str(path))


def epochs_of(loader: Any, epochs: int) -> Iterable[tuple[int, Any]]:
    """The training loop the README shows: no set_epoch, the loader's own epoch counter."""
    for epoch in range(loader.epoch, epochs):
        for batch in loader:
            yield epoch, to_py(batch)


def check_resume(
    make: Callable[[], Any],
    stop_after: int,
    epochs: int = 2,
    *,
    resume_with: Callable[[], Any] | None = None,
    expected: list[tuple[int, Any]] | None = None,
) -> list[tuple[int, Any]]:
    """Assert that stopping after ``stop_after`` batches and resuming in a fresh object equals one run.

    Also checks drift: loading a state and taking it again, twice, changes nothing.
    Returns the uninterrupted stream.

    Args:
        make: Builds the pipeline.
        stop_after: Batches taken before the state is saved (counted over epochs).
        epochs: How many epochs the run covers.
        resume_with: Builds the pipeline the state is loaded into, when it differs from ``make``'s
            (e.g. another ``num_workers``); then the saved state is compared with the one the resumed
            pipeline reports only through a second load (its own configuration entries differ).
        expected: The uninterrupted stream of ``make``, when the caller has it already (saves a run).
    """
    if expected is None:
        reference = make()
        expected = list(epochs_of(reference, epochs))
        del reference
    resume = resume_with or make
    first = make()
    head: list[tuple[int, Any]] = []
    if stop_after:
        for item in epochs_of(first, epochs):
            head.append(item)
            if len(head) == stop_after:
                break
    state = roundtrip(first.state_dict())
    workers = _has_workers(first)
    del first
    release(workers)
    middle = resume()
    middle.load_state_dict(state)
    again = roundtrip(middle.state_dict())
    if resume_with is None:
        assert again == state, "loading a state and taking it again changed it"
    resumed = resume()
    resumed.load_state_dict(again)
    assert roundtrip(resumed.state_dict()) == again, "loading a state and taking it again changed it"
    tail = list(epochs_of(resumed, epochs))
    workers = _has_workers(resumed)
    del middle, resumed
    release(workers)
    assert head + tail == expected, f"resume after {stop_after} batches diverged"
    return expected


def resume_chain(
    make: Callable[[], Any],
    stops: Iterable[int],
    epochs: int = 2,
    *,
    resume_with: Callable[[], Any] | None = None,
) -> tuple[list[tuple[int, Any]], list[dict[str, Any]]]:
    """Run ``epochs`` epochs, stopping after each (cumulative) batch count in ``stops`` and resuming in a
    fresh object each time: several breaks in one run, as TF's ``verify_multiple_breaks``.

    Returns:
        The stream delivered over all the pieces, and the (round-tripped) states taken at the stops.
    """
    stream: list[tuple[int, Any]] = []
    states: list[dict[str, Any]] = []
    loader = make()
    for stop in stops:
        if len(stream) < stop:
            for item in epochs_of(loader, epochs):
                stream.append(item)
                if len(stream) == stop:
                    break
        states.append(roundtrip(loader.state_dict()))
        workers = _has_workers(loader)
        loader = None
        release(workers)
        loader = (resume_with or make)()
        loader.load_state_dict(states[-1])
    stream.extend(epochs_of(loader, epochs))
    workers = _has_workers(loader)
    del loader
    release(workers)
    return stream, states


def check_exactly_once(stream: list[tuple[int, Any]], ids: Callable[[Any], list[int]], length: int) -> None:
    """Assert that every epoch of ``stream`` holds each of ``range(length)`` exactly once, whatever the
    order: nothing missing and nothing duplicated are checked (and reported) separately."""
    per_epoch: dict[int, list[int]] = {}
    for epoch, batch in stream:
        per_epoch.setdefault(epoch, []).extend(ids(batch))
    for epoch, seen in sorted(per_epoch.items()):
        counts = Counter(seen)
        duplicated = sorted(i for i, n in counts.items() if n > 1)
        missing = sorted(set(range(length)) - set(counts))
        unknown = sorted(set(counts) - set(range(length)))
        assert not duplicated, f"epoch {epoch}: delivered more than once: {duplicated}"
        assert not missing, f"epoch {epoch}: never delivered: {missing}"
        assert not unknown, f"epoch {epoch}: not in the dataset: {unknown}"


def release(workers: bool = True) -> None:
    """Collect loaders dropped by the caller now, in this process.

    A loader and its iterator reference each other, so only the cycle collector frees them (and shuts
    their workers down). Left to chance, it may run inside a worker forked later by another loader,
    where shutting down a sibling's workers fails ("can only test a child process"). Skipped
    (``workers=False``) when the loaders had no workers: collecting costs ~30 ms.
    """
    if workers:
        gc.collect()


def _has_workers(loader: Any) -> bool:
    return getattr(loader, "num_workers", 0) > 0


def assert_freed_without_cycle_collector(make: Callable[[], Any]) -> None:
    """A loader dropped mid-epoch (one batch taken) is freed by reference counting alone.

    In a reference cycle, the cycle collector would close a persistent worker's queues before the
    iterator could tell it to stop, and each worker would wait out torch's 5 s join timeout.
    """
    loader = make()
    it = iter(loader)
    next(it)
    ref = weakref.ref(loader)
    gc.disable()
    try:
        del loader, it
        assert ref() is None, "the loader is in a reference cycle"
    finally:
        gc.enable()


def start_child(script: Any, *args: object) -> Any:
    """Start ``python script args...`` with the repository on its path, stdout discarded and stderr piped,
    in its own session and process group, so that killing the group also kills its DataLoader workers."""
    import subprocess
    import sys

    from tests.support.paths import child_env

    return subprocess.Popen(
        [sys.executable, str(script), *map(str, args)],
        env=child_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
