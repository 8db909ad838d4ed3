"""Every touch of a third-party private API, in one place (this branch: only the checkpointer's part)."""

from __future__ import annotations

import logging

__all__ = ["FastForwardNoticeFilter"]


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
