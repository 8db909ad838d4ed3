"""Resume-equivalence checks for your own datasets and pipelines: a resumed run must equal an uninterrupted one.

The check this library's own test suite runs on every pipeline it ships, public as Grain's
``assert_equal_output_after_checkpoint`` is. Stream a pipeline; stop it at the start, after one batch,
mid-epoch, at the epoch's end and into the next epoch; round-trip its state through the checkpoint file
exactly as :class:`~torch_input_ckpt.InputCheckpointer` writes and reads it (canonical JSON, sorted keys, a
checksum, tensors as raw bytes); restore it into a *fresh* object from your factory; continue; compare
with the uninterrupted run, values and random draws included. A difference is reported as what it is:
samples missing, samples duplicated, samples not in the uninterrupted run, the same samples in another
order, or the same samples with other values (a random draw that was not restored).

Example:
    A map-style dataset whose samples carry a random augmentation, checked at the default stops::

        import torch
        from torch.utils.data import Dataset

        from torch_input_ckpt import ResumableDataLoader
        from torch_input_ckpt.testing import assert_equal_output_after_checkpoint


        class Noisy(Dataset):
            def __len__(self):
                return 10

            def __getitem__(self, index):
                return {"id": index, "noise": torch.rand(()).item()}  # reseeded per sample by the loader


        def make():
            return ResumableDataLoader(Noisy(), batch_size=3, shuffle=True, seed=7)


        assert_equal_output_after_checkpoint(make, epochs=2, ids=lambda batch: batch["id"])

The pipeline ``make`` returns is any iterable with ``state_dict()``, ``load_state_dict()`` and an ``epoch``
counter that its own iteration advances (:class:`~torch_input_ckpt.ResumableDataLoader` and
:class:`~torch_input_ckpt.ResumableSampler` are such). Wrap one that has no counter, as a training
script counts its epochs: the wrapper's ``__iter__`` yields from the pipeline, then adds one to
``self.epoch``; its state is ``{"epoch": self.epoch, "pipeline": pipeline.state_dict()}``.
"""

from __future__ import annotations

import gc
import json
import tempfile
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from .state.encoding import decode_tensors
from .store import files

__all__ = [
    "ResumableIterable",
    "assert_equal_output_after_checkpoint",
    "assert_exactly_once",
    "default_stops",
    "resume_chain",
    "roundtrip_state",
    "stream_epochs",
    "to_python",
]

Stream = list[tuple[int, Any]]
"""A run as delivered: ``(epoch, batch)`` pairs, batches as plain Python values."""

_SHOWN = 10  # entries listed per kind of difference; the count says how many more


@runtime_checkable
class ResumableIterable(Protocol):
    """What the checks stream: an iterable with a state and an epoch counter its iteration advances."""

    epoch: int

    def __iter__(self) -> Iterator[Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


def to_python(batch: Any) -> Any:
    """A batch as plain Python values (tensors as nested lists), so that runs compare with ``==``.

    Args:
        batch: A batch as a pipeline delivers it: tensors, dicts, lists and tuples of them, or plain values.

    Returns:
        The same structure with tensors turned into lists and tuples into lists.
    """
    if isinstance(batch, torch.Tensor):
        return batch.tolist()
    if isinstance(batch, dict):
        return {key: to_python(value) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return [to_python(value) for value in batch]
    return batch


def roundtrip_state(state: dict[str, Any], *, plain_json: bool = False) -> dict[str, Any]:
    """A state written as a checkpoint file and read back as a restore reads it.

    The file is the real format (canonical JSON with sorted keys and a checksum, tensors as raw bytes),
    written to a temporary file and read with the same validation ``InputCheckpointer.restore`` applies.
    Never only through memory: a state whose meaning depends on its dict order, or that holds what JSON
    cannot, fails here as it fails for a user restoring from the file.

    Args:
        state: What ``state_dict()`` returned.
        plain_json: Also require the state to be plain JSON before it is written (no tensors, no tuples),
            as this library's own states are.

    Returns:
        The state as a restore hands it to ``load_state_dict``.

    Raises:
        AssertionError: if ``plain_json`` and the state is not plain JSON.
        TypeError: if the state holds something a checkpoint cannot store, naming its key.
    """
    if plain_json:
        assert json.loads(json.dumps(state)) == state, "state is not plain JSON"
    with tempfile.TemporaryDirectory(prefix="roundtrip-") as directory:
        path = Path(directory) / files.InputFile(0, 0).name
        path.write_bytes(files.encode_checkpoint(rank=0, world_size=1, step=0, states={"input": state}, external=[]))
        checkpoint = files.read_checkpoint(path)
    return decode_tensors(checkpoint.states["input"], str(path))


def stream_epochs(pipeline: ResumableIterable, epochs: int) -> Iterator[tuple[int, Any]]:
    """The training loop: from the pipeline's own epoch up to ``epochs``, every batch as plain Python.

    Args:
        pipeline: What is streamed; its ``epoch`` says where a restored pipeline resumes.
        epochs: The number of epochs the whole run covers (not the number left).

    Yields:
        ``(epoch, batch)`` pairs.
    """
    for epoch in range(_epoch_of(pipeline), epochs):
        for batch in pipeline:
            yield epoch, to_python(batch)


def default_stops(expected: Stream) -> list[int]:
    """The stops checked when none are given: at the start, after one batch, mid-epoch, at the first
    epoch's end and one batch into the next epoch (those that the run is long enough for).

    Args:
        expected: The uninterrupted run.

    Returns:
        Batch counts, sorted, each at most ``len(expected)``.
    """
    if not expected:
        return [0]
    first = sum(1 for epoch, _ in expected if epoch == expected[0][0])
    return sorted(stop for stop in {0, 1, first // 2, first, first + 1} if stop <= len(expected))


def assert_equal_output_after_checkpoint(
    make: Callable[[], ResumableIterable],
    stops: int | Iterable[int] | None = None,
    epochs: int = 2,
    *,
    resume_with: Callable[[], ResumableIterable] | None = None,
    expected: Stream | None = None,
    ids: Callable[[Any], Iterable[Hashable]] | None = None,
    plain_json: bool = False,
) -> Stream:
    """Assert that a pipeline stopped anywhere and restored into a fresh object continues exactly.

    For each stop: a fresh pipeline from ``make`` delivers that many batches; its state goes through the
    checkpoint file (:func:`roundtrip_state`) into another fresh pipeline, which runs to the end. Both
    together must equal the uninterrupted run; loading the state and taking it again must not change it.

    Args:
        make: Builds the pipeline, a new object at each call (same configuration, no shared state).
        stops: Batch counts (over the whole run, across epochs) after which the state is taken; one
            count or several. Default: :func:`default_stops` (start, one batch, mid-epoch, epoch end,
            next epoch).
        epochs: The number of epochs the run covers.
        resume_with: Builds the pipeline the state is loaded into, if not ``make`` (e.g. other ``num_workers``);
            the drift check then starts at the second load (the configuration entries differ).
        expected: The uninterrupted run of ``make``, when the caller has it already (saves a run).
        ids: The sample identities in a batch (e.g. ``lambda batch: batch["id"]``). With them, a
            difference is reported per sample, and the same samples with other values are told apart
            (a random draw or other per-sample state not restored); without them, per batch.
        plain_json: Also require every state to be plain JSON (see :func:`roundtrip_state`).

    Returns:
        The uninterrupted run, as ``(epoch, batch)`` pairs.

    Raises:
        AssertionError: at the first stop whose resumed run differs, listing what is missing, what is
            duplicated, what is not in the uninterrupted run, order and value differences separately;
            or when a loaded state changes when it is taken again.
        ValueError: if a stop is negative or past the end of the run.

    Example:
        Two chosen stops, then a resume on another worker count that must continue the same run::

            run = assert_equal_output_after_checkpoint(make, [0, 5], ids=lambda batch: batch["id"])
            assert_equal_output_after_checkpoint(make, 5, resume_with=make_with_4_workers, expected=run)
    """
    if expected is None:
        reference = make()
        expected = list(stream_epochs(reference, epochs))
        workers = _has_workers(reference)
        del reference
        _collect(workers)
    if stops is None:
        stops = default_stops(expected)
    elif isinstance(stops, int):
        stops = [stops]
    for stop in stops:
        if not 0 <= stop <= len(expected):
            raise ValueError(f"stop {stop} is outside the run, which delivers {len(expected)} batches")
        _check_one_stop(make, resume_with, stop, epochs, expected, ids, plain_json)
    return expected


def _check_one_stop(
    make: Callable[[], ResumableIterable],
    resume_with: Callable[[], ResumableIterable] | None,
    stop: int,
    epochs: int,
    expected: Stream,
    ids: Callable[[Any], Iterable[Hashable]] | None,
    plain_json: bool,
) -> None:
    first = make()
    head = _take(first, stop, epochs)
    state = roundtrip_state(first.state_dict(), plain_json=plain_json)
    workers = _has_workers(first)
    del first
    _collect(workers)
    resume = resume_with or make
    middle = resume()
    middle.load_state_dict(state)
    again = roundtrip_state(middle.state_dict(), plain_json=plain_json)
    where = f"resumed after {stop} batches"
    if resume_with is None:
        _assert_same_state(state, again, f"{where}: loading a state and taking it again changed it")
    resumed = resume()
    resumed.load_state_dict(again)
    taken = roundtrip_state(resumed.state_dict(), plain_json=plain_json)
    _assert_same_state(again, taken, f"{where}: loading a state and taking it again changed it")
    tail = list(stream_epochs(resumed, epochs))
    workers = _has_workers(middle) or _has_workers(resumed)
    del middle, resumed
    _collect(workers)
    got = head + tail
    if got != expected:
        raise AssertionError(
            f"{where} ({_describe(stop, expected)}), the run diverged from the uninterrupted one:\n"
            + "\n".join(_differences(expected, got, ids))
        )


def resume_chain(
    make: Callable[[], ResumableIterable],
    stops: Iterable[int],
    epochs: int = 2,
    *,
    resume_with: Callable[[], ResumableIterable] | None = None,
    plain_json: bool = False,
) -> tuple[Stream, list[dict[str, Any]]]:
    """One run broken several times: stop after each (cumulative) batch count, restore into a fresh
    pipeline, go on (TensorFlow's ``verify_multiple_breaks``). Compare the result with an uninterrupted
    run, or check it with :func:`assert_exactly_once` where the order may legitimately change (e.g. a
    resume on another topology via ``resume_with``).

    Args:
        make: Builds the first pipeline (and every later one, unless ``resume_with`` is given).
        stops: Increasing batch counts over the whole run.
        epochs: The number of epochs the run covers.
        resume_with: Builds the pipeline each state is loaded into.
        plain_json: Also require every state to be plain JSON (see :func:`roundtrip_state`).

    Returns:
        The run delivered over all the pieces, and the states taken at the stops (as restored).
    """
    stream: Stream = []
    states: list[dict[str, Any]] = []
    pipeline = make()
    for stop in stops:
        stream.extend(_take(pipeline, stop - len(stream), epochs))
        states.append(roundtrip_state(pipeline.state_dict(), plain_json=plain_json))
        workers = _has_workers(pipeline)
        pipeline = None  # dropped and collected before the next one starts its workers
        _collect(workers)
        pipeline = (resume_with or make)()
        pipeline.load_state_dict(states[-1])
    stream.extend(stream_epochs(pipeline, epochs))
    workers = _has_workers(pipeline)
    del pipeline
    _collect(workers)
    return stream, states


def assert_exactly_once(stream: Stream, ids: Callable[[Any], Iterable[int]], length: int) -> None:
    """Assert that every epoch of a run delivers each of ``range(length)`` exactly once, in any order.

    Args:
        stream: ``(epoch, batch)`` pairs, e.g. from :func:`resume_chain`.
        ids: The sample indices in a batch.
        length: The dataset's length.

    Raises:
        AssertionError: naming the epoch and the indices delivered more than once, never delivered, or
            outside the dataset (each reported separately).
    """
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


# -- streaming ------------------------------------------------------------------------------------------


def _epoch_of(pipeline: Any) -> int:
    epoch = getattr(pipeline, "epoch", None)
    if not isinstance(epoch, int):
        raise TypeError(
            f"{type(pipeline).__name__} has no integer `epoch` counter: the checks need one to know where a "
            "restored pipeline resumes (wrap it: count finished passes in `epoch` and save it in the state)"
        )
    return epoch


def _take(pipeline: ResumableIterable, count: int, epochs: int) -> Stream:
    """The next ``count`` batches; the pipeline is left where a training loop that stops there leaves it."""
    taken: Stream = []
    if count <= 0:
        return taken
    for item in stream_epochs(pipeline, epochs):
        taken.append(item)
        if len(taken) == count:
            break
    return taken


def _has_workers(pipeline: Any) -> bool:
    return getattr(pipeline, "num_workers", 0) > 0


def _collect(workers: bool) -> None:
    """Collect the pipelines the caller just dropped, now, in this process, when they had workers.

    A DataLoader and its iterator reference each other, so only the cycle collector frees them (and shuts
    their workers down). Left to chance, it may run inside a worker forked later by another pipeline, where
    shutting down a sibling's workers fails ("can only test a child process"). Skipped without workers:
    collecting costs ~30 ms.
    """
    if workers:
        gc.collect()


# -- reporting ------------------------------------------------------------------------------------------


def _assert_same_state(saved: Any, taken: Any, message: str) -> None:
    if saved != taken:
        paths = _state_differences(saved, taken, "state")
        raise AssertionError(f"{message}: " + "; ".join(paths[:_SHOWN]) + _more(len(paths)))


def _state_differences(a: Any, b: Any, path: str) -> list[str]:
    """Where two states differ, as ``path: saved -> taken``."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b:
                out.append(
                    f"{path}[{key!r}]: {'absent' if key not in a else _short(a[key])} -> "
                    f"{'absent' if key not in b else _short(b[key])}"
                )
            else:
                out.extend(_state_differences(a[key], b[key], f"{path}[{key!r}]"))
        return out
    equal = bool(torch.equal(a, b)) if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) else a == b
    return [] if equal else [f"{path}: {_short(a)} -> {_short(b)}"]


def _describe(stop: int, expected: Stream) -> str:
    """Where a stop falls: ``"at the start"``, ``"mid-epoch 0"``, ``"at the end of epoch 0"``..."""
    if stop == 0:
        return "at the start"
    epoch = expected[stop - 1][0]
    if stop == len(expected) or expected[stop][0] != epoch:
        return f"at the end of epoch {epoch}"
    return f"mid-epoch {epoch}"


def _differences(expected: Stream, got: Stream, ids: Callable[[Any], Iterable[Hashable]] | None) -> list[str]:
    """What differs, one line per kind: missing, duplicated, unexpected, order, values."""
    want, have = _keys(expected, ids), _keys(got, ids)
    unit, one = ("samples", "sample") if ids is not None else ("batches", "batch")
    lines = _count_differences(want, have, unit)
    other_values = any(line.startswith(("  missing", "  unexpected")) for line in lines)
    common_want, common_have = _common(want, have), _common(have, want)
    if common_want != common_have:
        at = next(i for i, (w, h) in enumerate(zip(common_want, common_have, strict=True)) if w != h)
        lines.append(
            f"  order: the {unit} both runs delivered come in another order, first at {one} {at}: "
            f"expected {_short(common_want[at])}, got {_short(common_have[at])}"
        )
    if want == have:
        lines.append(_value_differences(expected, got))
    elif ids is None and other_values:
        lines.append(
            "  (without ids=, a batch with other values counts as missing and unexpected: pass ids= to "
            "tell a random draw that was not restored from a wrong sample)"
        )
    return lines


def _count_differences(want: list[Hashable], have: list[Hashable], unit: str) -> list[str]:
    """Keys missing from ``have``, more often in ``have`` than in ``want``, and not in ``want`` at all."""
    missing = Counter(want) - Counter(have)
    extra = Counter(have) - Counter(want)
    known = set(want)
    duplicated = [key for key in extra.elements() if key in known]
    unexpected = [key for key in extra.elements() if key not in known]
    lines = []
    if missing:
        lines.append(f"  missing: {missing.total()} {unit} never delivered: {_listing(missing.elements())}")
    if duplicated:
        lines.append(
            f"  duplicated: {len(duplicated)} {unit} delivered more often than in the uninterrupted run: "
            f"{_listing(duplicated)}"
        )
    if unexpected:
        lines.append(f"  unexpected: {len(unexpected)} {unit} not in the uninterrupted run: {_listing(unexpected)}")
    return lines


def _value_differences(expected: Stream, got: Stream) -> str:
    at = [i for i, (w, h) in enumerate(zip(expected, got, strict=False)) if w != h]
    if not at:  # equal as JSON, unequal as Python values (e.g. a NaN, or an int that became a float)
        return "  values: equal as JSON but not as Python values (a NaN, or another type)"
    first = at[0]
    return (
        f"  values: the same samples in the same order, with other values in {len(at)} batches (a random draw "
        f"or other per-sample state was not restored), first batch {first} (epoch {expected[first][0]}): "
        f"expected {_short(expected[first][1])}, got {_short(got[first][1])}"
    )


def _keys(stream: Stream, ids: Callable[[Any], Iterable[Hashable]] | None) -> list[tuple[int, Hashable]]:
    """One key per sample (with ``ids``) or per batch, tagged with its epoch."""
    if ids is None:
        return [(epoch, json.dumps(batch, sort_keys=True, default=repr)) for epoch, batch in stream]
    return [(epoch, _hashable(key)) for epoch, batch in stream for key in _as_list(ids(batch))]


def _as_list(keys: Any) -> list[Any]:
    keys = to_python(keys)
    return list(keys) if isinstance(keys, list) else [keys]


def _hashable(key: Any) -> Hashable:
    return json.dumps(key, sort_keys=True, default=repr) if isinstance(key, (list, dict)) else key


def _common(sequence: Sequence[Any], other: Sequence[Any]) -> list[Any]:
    """``sequence`` keeping only as many of each key as ``other`` also holds (the first ones)."""
    budget = Counter(sequence) & Counter(other)
    kept = []
    for key in sequence:
        if budget[key] > 0:
            budget[key] -= 1
            kept.append(key)
    return kept


def _listing(keys: Iterable[Any]) -> str:
    keys = list(keys)
    return "[" + ", ".join(_short(key) for key in keys[:_SHOWN]) + "]" + _more(len(keys))


def _more(count: int) -> str:
    return f" and {count - _SHOWN} more" if count > _SHOWN else ""


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
