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
        return self._wait(0)

    def wait(self, timeout: float | None = None) -> int:
        code = self._wait(timeout)
        if code is None:
            raise subprocess.TimeoutExpired(f"forked run {self.pid}", timeout or 0)
        return code

    def _wait(self, timeout: float | None) -> int | None:
        if self.returncode is None:
            status = self._server.status(self.pid, timeout)
            if status is not None:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


class ForkServer:
    """One tests/support/forkserver.py process, importing ``preload`` once; ``env``: its environment (and so
    its runs'), by default this checkout on the path."""

    def __init__(self, errors: Path, preload: tuple[str, ...] = (), env: dict[str, str] | None = None) -> None:
        self._errors = errors
        self._count = 0
        self._buffer = b""
        self._ended: dict[int, int] = {}
        self._proc = subprocess.Popen(
            [sys.executable, str(SUPPORT / "forkserver.py"), *preload],
            env=env or child_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )

    def start(self, script: Any, *args: object, env: dict[str, str] | None = None, stdout: bool = False) -> Forked:
        """Run ``python script args...`` as a forked process, with ``env`` added to its environment; stderr (and
        stdout if asked, else discarded) go to a file the returned run's ``stderr`` reads."""
        self._count += 1
        stderr = self._errors / f"forked-{self._count}.err"
        stderr.touch()
        request = {"script": str(script), "args": [str(a) for a in args], "stderr": str(stderr)}
        self._proc.stdin.write((json.dumps({**request, "env": env or {}, "stdout": stdout}) + "\n").encode())
        self._proc.stdin.flush()
        answer = self._answer(timeout=180)  # the first request waits for the server's imports
        while answer is not None and "started" not in answer:
            self._ended[answer["pid"]] = answer["status"]
            answer = self._answer(timeout=180)
        assert answer is not None, "the fork server did not start the run"
        return Forked(self, answer["started"], stderr.open("rb"))

    def status(self, pid: int, timeout: float | None) -> int | None:
        """The ``waitpid`` status of run ``pid``, or None if it does not end within ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while pid not in self._ended:
            answer = self._answer(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if answer is None:
                return None
            self._ended[answer["pid"]] = answer["status"]
        return self._ended.pop(pid)

    def _answer(self, timeout: float | None) -> dict | None:
        """The server's next line, or None if none comes within ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self._proc.stdout], [], [], left)[0]:
                return None
            chunk = os.read(self._proc.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError(f"the fork server exited ({self._proc.wait()})")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def close(self) -> None:
        self._proc.stdin.close()
        self._proc.wait(timeout=60)
        self._proc.stdout.close()
