"""Run a child script many times without starting an interpreter (and importing torch, 2-10 s) for each run.

The SIGKILL tests kill and restart a training script a dozen times; what they test is a process killed at a
random moment and the files it leaves, not the interpreter's start. This server imports torch and the package
once, then forks one process per request, which runs the script as ``python script args...`` would (its own
process group, stdout discarded, stderr to a file) and has nothing of an earlier run: the server never runs one.

Usage: python forkserver.py; requests on stdin, one JSON line each: ``{"script", "args", "stderr"}``; it answers
``{"pid"}`` once the process runs in its own group, then ``{"status"}`` (the ``waitpid`` status) when it ends.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import traceback

import torch  # noqa: F401  (imported once, here)

import torch_input_ckpt  # noqa: F401


def _run(request: dict) -> None:
    """In the forked process: become ``python script args...`` and exit with its status."""
    code = 0
    try:
        os.setpgid(0, 0)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(err, 2)
        sys.stdin.close()
        sys.argv = [request["script"], *request["args"]]
        runpy.run_path(request["script"], run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:  # noqa: BLE001  (reported like the interpreter would: traceback, status 1)
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _run(request)
        try:
            os.setpgid(pid, pid)  # here too, so that the group exists before the caller can signal it
        except ProcessLookupError:  # already ended: its status follows
            pass
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"status": status}), flush=True)


if __name__ == "__main__":
    main()
