"""The one resume-equivalence helper every test uses: stop a real stream, round-trip its state,
restore into a fresh object, continue, and compare with an uninterrupted run."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable
from typing import Any

import torch


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
    """Serialise a state as a checkpoint would: it must survive JSON and torch.load(weights_only=True)."""
    assert json.loads(json.dumps(state)) == state, "state is not plain JSON"
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def epochs_of(loader: Any, epochs: int) -> Iterable[tuple[int, Any]]:
    """The training loop the README shows: no set_epoch, the loader's own epoch counter."""
    for epoch in range(loader.epoch, epochs):
        for batch in loader:
            yield epoch, to_py(batch)


def check_resume(make: Callable[[], Any], stop_after: int, epochs: int = 2) -> list[tuple[int, Any]]:
    """Assert that stopping after ``stop_after`` batches and resuming in a fresh object equals one run.

    Also checks drift: loading a state and taking it again, twice, changes nothing.
    Returns the uninterrupted stream.
    """
    expected = list(epochs_of(make(), epochs))
    first = make()
    head: list[tuple[int, Any]] = []
    if stop_after:
        for item in epochs_of(first, epochs):
            head.append(item)
            if len(head) == stop_after:
                break
    state = roundtrip(first.state_dict())
    middle = make()
    middle.load_state_dict(state)
    assert roundtrip(middle.state_dict()) == state, "loading a state and taking it again changed it"
    resumed = make()
    resumed.load_state_dict(roundtrip(middle.state_dict()))
    tail = list(epochs_of(resumed, epochs))
    assert head + tail == expected, f"resume after {stop_after} batches diverged"
    return expected
