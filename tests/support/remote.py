"""What the object-storage tests share beyond the server itself."""

from __future__ import annotations

import time

from .s3server import FaultProxy


def settled(proxy: FaultProxy, quiet_s: float = 0.1) -> FaultProxy:
    """The proxy once no request was added to its log for ``quiet_s``: it logs a request after answering it, so
    the client may hold its answer a moment before the entry is there."""
    seen = -1
    while len(proxy.requests()) != seen:
        seen = len(proxy.requests())
        time.sleep(quiet_s)
    return proxy
