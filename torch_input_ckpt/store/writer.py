"""A background thread that runs file writes in order, so that saving never waits for the disk."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable

__all__ = ["BackgroundWriter"]

# Saves queued beyond this block the caller: the disk cannot keep up, and letting the queue grow would
# only lose more saves on a crash.
QUEUE_SIZE = 4


class BackgroundWriter:
    """Runs submitted jobs one at a time, in order, on a daemon thread started at the first job.

    A job that raises does not stop the thread: the first error is kept and :meth:`take_error`
    hands it to the caller's next call, so a failed write is never silent. The writer holds no
    reference to its owner, so the owner can be garbage-collected (and its finalizer close us).
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(QUEUE_SIZE)
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._closed = False
        #: The first error of a job since the last :meth:`take_error` (read without a lock on the hot path).
        self.error: BaseException | None = None
        self._more_errors = 0
        self._error_lock = threading.Lock()

    def submit(self, job: Callable[[], None]) -> None:
        """Queue ``job``; blocks only while :data:`QUEUE_SIZE` jobs are already waiting."""
        if self._closed:
            raise RuntimeError(f"{self._name} is closed")
        if self._thread is None:
            # Started lazily: a checkpointer that never saves leaves no thread behind (threads and the
            # fork()s of DataLoader workers do not mix well).
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        self._queue.put(job)

    def flush(self) -> None:
        """Wait until every job submitted so far has run."""
        if self._thread is not None and self._mine():
            self._queue.join()

    def close(self) -> None:
        """Run what is queued, then stop the thread. Safe to call twice, at exit, or in a forked child."""
        if self._closed or not self._mine():
            return
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()

    def take_error(self) -> BaseException | None:
        """The first failure since the last call (with a note counting later ones), and forget it."""
        with self._error_lock:
            error, self.error = self.error, None
            more, self._more_errors = self._more_errors, 0
        if error is not None and more and hasattr(error, "add_note"):
            error.add_note(f"({more} later background write(s) also failed)")
        return error

    def _mine(self) -> bool:
        # A DataLoader worker forked from our process has a copy of this object but no thread: it must
        # neither wait for nor write to the parent's queue.
        return os.getpid() == self._pid

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                job()
            except BaseException as error:  # surfaced to the caller by take_error, never swallowed
                with self._error_lock:
                    if self.error is None:
                        self.error = error
                    else:
                        self._more_errors += 1
            finally:
                self._queue.task_done()
