"""Bounded retries of transient object-store failures: exponential backoff with full jitter, and a time bound.

A failure is transient when retrying may succeed: a timeout, a 5xx, throttling (429, ``SlowDown``), a reset or
closed connection. Everything else (no credentials, access denied, no such bucket or object, an object changed)
is raised at once: retrying it would only delay the message. The first transient failure of each object is logged
once at WARNING (the rest at DEBUG), so a flaky store does not flood the log of a long run.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from ..base.messages import short
from ..errors import ObjectStoreError, ObjectStoreUnavailableError

__all__ = ["RetryPolicy", "call_with_retries"]

logger = logging.getLogger("torch_input_ckpt")

T = TypeVar("T")

# Jitter from the operating system's entropy, never from Python's global RNG: a draw from the global RNG in a
# DataLoader worker would change the samples' own random streams (and trigger UnseededDrawWarning).
_JITTER = random.SystemRandom()

# URLs whose first transient failure was already logged at WARNING in this process.
_WARNED: set[str] = set()
_WARNED_LOCK = threading.Lock()


@dataclass(frozen=True)
class RetryPolicy:
    """How long transient failures are retried.

    Attempt ``n`` (from 0) waits a uniform random time in ``[0, min(max_delay_s, base_delay_s * 2**n)]``
    ("full jitter", so that many workers throttled together do not retry in lockstep); retries stop after
    ``attempts`` attempts or once ``total_s`` seconds have passed since the first, whichever comes first.

    Given as ``storage_options={"retry": {"attempts": 5, "total_s": 30}}`` or ``ObjectStore(retry=...)``.
    """

    attempts: int = 10
    base_delay_s: float = 0.1
    max_delay_s: float = 5.0
    total_s: float = 120.0

    def __post_init__(self) -> None:
        if not (isinstance(self.attempts, int) and self.attempts >= 1):
            raise ObjectStoreError(f"retry attempts={short(self.attempts)}: expected an integer >= 1")
        for name in ("base_delay_s", "max_delay_s", "total_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value >= 0):
                raise ObjectStoreError(f"retry {name}={short(value)}: expected a number of seconds >= 0")

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | RetryPolicy | None) -> RetryPolicy:
        """The policy of ``storage_options["retry"]`` (a mapping of this class's fields), default if absent."""
        if options is None:
            return cls()
        if isinstance(options, RetryPolicy):
            return options
        known = {field.name for field in fields(cls)}
        if not isinstance(options, Mapping) or set(options) - known:
            raise ObjectStoreError(
                f"storage_options['retry']={short(options)}: expected a mapping with keys among {sorted(known)}"
            )
        return cls(**options)

    def delay_s(self, attempt: int) -> float:
        """The wait before retry ``attempt`` (0 for the first retry)."""
        return _JITTER.uniform(0.0, min(self.max_delay_s, self.base_delay_s * 2.0**attempt))


def _log_transient(url: str, what: str, error: BaseException, policy: RetryPolicy) -> None:
    with _WARNED_LOCK:
        first = url not in _WARNED
        _WARNED.add(url)
    message = "%s %s failed transiently (%s); retrying (up to %d attempts, %.0f s)"
    logger.log(
        logging.WARNING if first else logging.DEBUG, message, what, url, short(error), policy.attempts, policy.total_s
    )


def call_with_retries(
    operation: Callable[[], T],
    *,
    url: str,
    what: str,
    policy: RetryPolicy,
    transient: Callable[[BaseException], bool],
) -> T:
    """``operation()``, retried while it fails transiently, within ``policy``'s bounds.

    Raises:
        ObjectStoreUnavailableError: the failures went on past the bound (names ``url``, attempts, time, last
            failure). A failure that is not transient propagates at once.
    """
    started = time.monotonic()
    for attempt in range(policy.attempts):
        try:
            return operation()
        except Exception as error:  # noqa: BLE001 - classified right below; the rest re-raised as they are
            if not transient(error):
                raise
            last = error
        elapsed = time.monotonic() - started
        wait = policy.delay_s(attempt)
        if attempt + 1 == policy.attempts or elapsed + wait > policy.total_s:
            break
        _log_transient(url, what, last, policy)
        time.sleep(wait)
    elapsed = time.monotonic() - started
    raise ObjectStoreUnavailableError(
        f"{what} {url} failed {attempt + 1} times in {elapsed:.1f} s with transient errors, the last: "
        f"{short(last)}; check the endpoint and the network, or allow more with "
        f"storage_options={{'retry': {{'attempts': ..., 'total_s': ...}}}}"
    ) from last
