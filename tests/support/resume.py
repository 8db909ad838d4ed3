"""The suite's resume-equivalence helpers: :mod:`torch_input_ckpt.testing`, the public check, with this
library's own states held to plain JSON; plus what only the suite needs (collecting dropped loaders, a
loader freed without the cycle collector, a child process in its own group)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from torch_input_ckpt import testing
from torch_input_ckpt.testing import assert_exactly_once as check_exactly_once
from torch_input_ckpt.testing import stream_epochs as epochs_of
from torch_input_ckpt.testing import to_python as to_py

__all__ = [
    "assert_freed_without_cycle_collector",
    "check_exactly_once",
    "check_resume",
    "epochs_of",
    "release",
    "resume_chain",
    "roundtrip",
    "start_child",
    "to_py",
]


def roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    """:func:`torch_input_ckpt.testing.roundtrip_state`, the state required to be plain JSON."""
    return testing.roundtrip_state(state, plain_json=True)


def check_resume(
    make: Callable[[], Any],
    stop_after: int,
    epochs: int = 2,
    *,
    resume_with: Callable[[], Any] | None = None,
    expected: list[tuple[int, Any]] | None = None,
) -> list[tuple[int, Any]]:
    """:func:`torch_input_ckpt.testing.assert_equal_output_after_checkpoint` at one stop, states plain JSON."""
    return testing.assert_equal_output_after_checkpoint(
        make, [stop_after], epochs, resume_with=resume_with, expected=expected, plain_json=True
    )


def resume_chain(
    make: Callable[[], Any],
    stops: Iterable[int],
    epochs: int = 2,
    *,
    resume_with: Callable[[], Any] | None = None,
) -> tuple[list[tuple[int, Any]], list[dict[str, Any]]]:
    """:func:`torch_input_ckpt.testing.resume_chain`, states plain JSON."""
    return testing.resume_chain(make, stops, epochs, resume_with=resume_with, plain_json=True)


def release(workers: bool = True) -> None:
    """Collect loaders dropped by the caller now, in this process.

    A loader and its iterator reference each other, so only the cycle collector frees them (and shuts
    their workers down). Left to chance, it may run inside a worker forked later by another loader,
    where shutting down a sibling's workers fails ("can only test a child process"). Skipped
    (``workers=False``) when the loaders had no workers: collecting costs ~30 ms.
    """
    if workers:
        gc.collect()


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
