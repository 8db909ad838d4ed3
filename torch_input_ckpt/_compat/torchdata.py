"""torchdata's private parts: the keys of ``StatefulDataLoader``'s state, and its fast-forward notice."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from . import unsupported

__all__ = [
    "FastForwardNoticeFilter",
    "STATEFUL_INNER_KEY",
    "stateful_dataloader_batches",
    "stateful_dataloader_drop_pending",
]

# -- torchdata: StatefulDataLoader's state -----------------------------------------------------------
# Its state dict's keys are private constants of `torchdata.stateful_dataloader.stateful_dataloader`:
# single-process states hold `_num_yielded`, multi-process ones a `_snapshot` with `_snapshot_step`.

# The key that tells torchdata's single-process (False) and multi-process (True) iterator states apart;
# loading one into the other fails inside torchdata with a bare AssertionError, so we look first.
STATEFUL_INNER_KEY = {False: "_num_yielded", True: "_snapshot"}


def stateful_dataloader_batches(state: Mapping[str, Any]) -> int | None:
    """Batches torchdata's StatefulDataLoader delivered in its current pass (single- or multi-process)."""
    yielded = state.get("_num_yielded")
    if type(yielded) is int:
        return yielded
    snapshot = state.get("_snapshot")
    if isinstance(snapshot, Mapping) and type(snapshot.get("_snapshot_step")) is int:
        since = state.get("_steps_since_snapshot")
        return snapshot["_snapshot_step"] + (since if type(since) is int else 0)  # type: ignore[no-any-return]
    return None


def stateful_dataloader_drop_pending(loader: Any) -> None:
    """Forget a state loaded into a StatefulDataLoader before (its ``load_state_dict({})`` keeps it)."""
    if not hasattr(loader, "next_iter_state"):
        import torchdata

        raise unsupported("torchdata", torchdata.__version__, "StatefulDataLoader.next_iter_state", "0.11")
    loader.next_iter_state = None


# -- torchdata: StatefulDataLoader's fast-forward notice ----------------------------------------------
# torchdata 0.11 logs a WARNING on its module logger when it resumes an IterableDataset without state by
# re-reading it ("... so we are naively fast-forwarding your dataset by N steps ..."). Under
# external_state_policy="ignore" the user has said that this part is not captured, so the checkpointer
# drops exactly that record (matched on the logger name and the message) while it is open.
_TORCHDATA_LOGGER = "torchdata.stateful_dataloader.stateful_dataloader"
_FAST_FORWARD_TEXT = "naively fast-forwarding your dataset"


class FastForwardNoticeFilter(logging.Filter):
    """Drops torchdata's "naively fast-forwarding" notice while installed (and nothing else)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _FAST_FORWARD_TEXT not in record.getMessage()

    def install(self) -> None:
        """Attach to torchdata's logger (idempotent)."""
        logging.getLogger(_TORCHDATA_LOGGER).addFilter(self)

    def uninstall(self) -> None:
        """Detach (idempotent)."""
        logging.getLogger(_TORCHDATA_LOGGER).removeFilter(self)
