"""The test side of tests/support/forkserver.py: start a child script from the server, and wait for it or kill
its group as one would a :class:`subprocess.Popen` started with ``start_new_session=True``."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

from tests.support.paths import SUPPORT, child_env


class Forked:
    """A run of the server: the part of :class:`subprocess.Popen` the SIGKILL tests use (``pid``, ``poll``,
    ``wait``, ``returncode``, ``stderr``)."""

    def __init__(self, server: ForkServer, pid: int, stderr: BinaryIO) -> None:
        self._server = server
        self.pid = pid
        self.stderr = stderr
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.wait(timeout=0, check=False)

    def wait(self, timeout: float | None = None, check: bool = True) -> int | None:
        if self.returncode is None:
            answer = self._server.answer(timeout)
            if answer is None:
                if check:
                    raise subprocess.TimeoutExpired(f"forked {self.pid}", timeout or 0)
                return None
            self.returncode = os.waitstatus_to_exitcode(answer["status"])
            self._server.busy = False
        return self.returncode


class ForkServer:
    """One tests/support/forkserver.py process; one run at a time (each SIGKILL test restarts its child in turn)."""

    def __init__(self, errors: Path) -> None:
        self._errors = errors
        self._count = 0
        self._buffer = b""
        self.busy = False
        self._proc = subprocess.Popen(
            [sys.executable, str(SUPPORT / "forkserver.py")],
            env=child_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )

    def start(self, script: Any, *args: object) -> Forked:
        """Run ``python script args...`` as a forked process, stderr to a file the returned run reads."""
        assert not self.busy, "the previous run has not been waited for"
        self._count += 1
        stderr = self._errors / f"forked-{self._count}.err"
        stderr.touch()
        request = {"script": str(script), "args": [str(a) for a in args], "stderr": str(stderr)}
        self._proc.stdin.write((json.dumps(request) + "\n").encode())
        self._proc.stdin.flush()
        self.busy = True
        answer = self.answer(timeout=120)  # the first request waits for the server's imports
        assert answer is not None and "pid" in answer, f"the fork server did not start the run: {answer}"
        return Forked(self, answer["pid"], stderr.open("rb"))

    def answer(self, timeout: float | None) -> dict | None:
        """The server's next line, or None if none comes within ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self._proc.stdout], [], [], left)[0]:
                return None
            chunk = os.read(self._proc.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError(f"the fork server exited ({self._proc.wait()})")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def close(self) -> None:
        self._proc.stdin.close()
        self._proc.wait(timeout=60)
        self._proc.stdout.close()
