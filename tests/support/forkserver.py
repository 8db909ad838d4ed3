"""Run child scripts many times without starting an interpreter (and importing torch, 2-10 s) for each run.

The SIGKILL tests kill and restart a training script again and again; what they test is a process killed at a
random moment and the files it leaves, not the interpreter's start. This server imports torch, the package and
the modules named on its command line once, then forks one process per request, which runs the script as
``python script args...`` would (its own process group, stdout discarded or with stderr, stderr to a file, the
request's variables added to the environment) and holds nothing of an earlier run: the server never runs one.

Usage: python forkserver.py [MODULE...]; requests on stdin, one JSON line each: ``{"script", "args", "stderr",
"stdout", "env"}``; it answers ``{"started": pid}`` once the process runs in its own group, and ``{"pid", "status"}``
(the ``waitpid`` status) when a run ends. Runs may overlap.
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import select
import sys
import traceback

import torch  # noqa: F401  (imported once, here)

import torch_input_ckpt  # noqa: F401


def _run(request: dict) -> int:
    """In the forked process: run ``python script args...``; its exit status."""
    os.setpgid(0, 0)
    err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(err, 2)
    os.dup2(err if request.get("stdout") else os.open(os.devnull, os.O_WRONLY), 1)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.environ.update(request.get("env") or {})
    sys.argv = [request["script"], *request["args"]]
    try:
        runpy.run_path(request["script"], run_name="__main__")
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            return exit_.code or 0
        print(exit_.code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001  (reported as the interpreter would: traceback, status 1)
        traceback.print_exc()
        return 1
    return 0


def _say(answer: dict) -> None:
    os.write(1, (json.dumps(answer) + "\n").encode())


def main() -> None:
    for module in sys.argv[1:]:
        importlib.import_module(module)
    buffer, running, open_ = b"", set(), True
    while open_ or running:
        # Requests as they come; ended runs reaped every 5 ms while some run.
        if select.select([0] if open_ else [], [], [], 0.005 if running else None)[0]:
            chunk = os.read(0, 65536)
            open_ = bool(chunk)
            buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            pid = os.fork()
            if pid == 0:
                # Then this process ends as an interpreter does (atexit handlers, threads joined, files flushed).
                sys.exit(_run(json.loads(line)))
            try:
                os.setpgid(pid, pid)  # here too, so that the group exists before the caller can signal it
            except ProcessLookupError:  # already ended: its status follows
                pass
            running.add(pid)
            _say({"started": pid})
        while running:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            running.discard(pid)
            _say({"pid": pid, "status": status})


if __name__ == "__main__":
    main()
