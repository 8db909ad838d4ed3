"""Run an example file in this process, as ``python examples/NAME.py ARGS`` would, for the runs where a fresh
process is not the point (an example's first, uninterrupted run): the interpreter's start-up and the imports of
torch, Lightning or transformers are paid once per session instead of once per run. The resume that the docs promise
(a fresh process reading the files the first run wrote) stays a subprocess in each test.

What an example may change in this process is put back afterwards: the working directory, ``sys.argv``,
``sys.path``, the environment (Lightning's ``seed_everything`` sets ``PL_GLOBAL_SEED``, which a later child would
inherit), the global RNGs and torch's thread count, logging, the warning filters (an example runs under the default
filters, as in its own process, not under pytest's ``filterwarnings = error``; its warnings go to stderr) and
accelerate's process-wide state singletons."""

from __future__ import annotations

import gc
import logging
import os
import random
import runpy
import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from .paths import REPO, child_env

EXAMPLES = REPO / "examples"


@contextmanager
def _put_back() -> Iterator[None]:
    cwd, argv, path, environ = os.getcwd(), sys.argv[:], sys.path[:], dict(os.environ)
    rngs = torch.get_rng_state(), np.random.get_state(), random.getstate()
    threads = torch.get_num_threads()
    loggers = [logging.getLogger(), logging.getLogger("torch_input_ckpt")]
    logging_state = [(lg, lg.level, lg.handlers[:], lg.propagate) for lg in loggers]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.resetwarnings()
            warnings.simplefilter("default")
            try:
                yield
            finally:  # printed as the example's own process would print them, not recorded by pytest
                for w in caught:
                    sys.stderr.write(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line))
    finally:
        os.chdir(cwd)
        sys.argv[:], sys.path[:] = argv, path
        os.environ.clear()
        os.environ.update(environ)
        torch.set_rng_state(rngs[0])
        np.random.set_state(rngs[1])
        random.setstate(rngs[2])
        torch.set_num_threads(threads)
        for lg, level, handlers, propagate in logging_state:
            lg.setLevel(level)
            lg.handlers[:] = handlers
            lg.propagate = propagate
        # The example's globals (a DataLoader iterator with its forked workers, which hold the checkpointer's
        # lock as the process did) die here, as they would when its process ends: a fresh process resuming from
        # the same directory must not wait for them.
        gc.collect()
        if "accelerate.state" in sys.modules:  # a Trainer or Accelerator built by the example
            from accelerate.state import AcceleratorState, GradientState

            AcceleratorState._reset_state(reset_partial_state=True)
            GradientState._reset_state()


def run_here(name: str, *args: object, cwd: Path | None = None, **env: str) -> None:
    """Run ``examples/<name>`` with ``args`` as ``__main__`` in this process (from ``cwd``, with ``env`` added).
    Its output goes to this process's stdout and stderr: read it with pytest's ``capfd``, which also sees the
    output of the subprocesses an example starts. An exception in the example is raised here, and so is an exit
    with a status other than 0."""
    script = EXAMPLES / name
    with _put_back():
        if cwd is not None:
            os.chdir(cwd)
        os.environ.update(env)
        sys.argv[:] = [str(script), *map(str, args)]
        sys.path.insert(0, str(script.parent))  # as `python script.py` puts the script's folder first
        try:
            runpy.run_path(str(script), run_name="__main__")
        except SystemExit as done:  # sys.exit() ends the example as it ends a process: only a failure is one
            if done.code not in (None, 0):
                raise AssertionError(f"{name} exited with {done.code!r}") from done


def run_fresh(name: str, *args: object, cwd: Path | None = None, timeout: float = 240) -> tuple[list[str], str]:
    """Run ``examples/<name>`` with ``args`` in a fresh process (the checkout first on ``PYTHONPATH``, the Hugging
    Face hub offline): its stdout lines and its stderr. A failure or a traceback fails the test with the stderr."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"),
        cwd=cwd,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done.stdout.splitlines(), done.stderr
