"""The installed wheel, not the checkout: public API, every module file, py.typed, a save/restore, the CLI.

Run by ``make wheel-smoke`` with the fresh venv's python, from a directory outside the checkout, as
``python wheel_smoke.py CHECKOUT``: CHECKOUT is only read for the list of ``.py`` files the wheel must hold.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGE = "torch_input_ckpt"


def fail(message: str) -> None:
    print(f"wheel-smoke: FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def check_installed_not_checkout(checkout: Path) -> Path:
    """The package imported is the installed one (site-packages, not editable), and its torch is the CPU pin."""
    import torch

    import torch_input_ckpt

    installed = Path(torch_input_ckpt.__file__).resolve().parent
    if installed == checkout / PACKAGE:
        fail(f"{PACKAGE} was imported from the checkout ({installed}), not from the installed wheel")
    if installed.parent.name != "site-packages" or Path(sys.prefix).resolve() not in installed.parents:
        fail(f"{PACKAGE} was imported from {installed}, not from this venv's site-packages ({sys.prefix})")
    if any(".egg-link" in p.name or p.name.startswith("__editable__") for p in installed.parent.iterdir()):
        fail(f"{PACKAGE} is installed editable in {installed.parent}, not from the wheel")
    if torch.__version__ != "2.13.0+cpu":
        fail(f"the fresh venv has torch {torch.__version__}, expected 2.13.0+cpu (the pinned CPU build)")
    print(f"wheel-smoke: {PACKAGE} from {installed}; torch {torch.__version__}")
    return installed


def check_files(checkout: Path, installed: Path) -> None:
    """Every .py file of the checkout's package is installed (and nothing else: no stale build/ leftovers)."""
    source = checkout / PACKAGE

    def modules(root: Path) -> set[str]:
        return {p.relative_to(root).as_posix() for p in root.rglob("*.py") if "__pycache__" not in p.parts}

    expected, found = modules(source), modules(installed)
    if missing := sorted(expected - found):
        fail(f"{len(missing)} module file(s) of the checkout are not in the wheel (setuptools packages=?): {missing}")
    if extra := sorted(found - expected):
        fail(f"the wheel holds {len(extra)} module file(s) the checkout does not (a stale build/?): {extra}")
    if not (installed / "py.typed").is_file():
        fail("py.typed is not installed (package-data)")
    folders = sorted({str(Path(m).parent) for m in expected} - {"."})
    print(f"wheel-smoke: {len(expected)} module files installed, py.typed present; subpackages: {folders or 'none'}")


# The extras' third parties ([lightning], [hf], [data], [remote], [torchtitan], [plot]): a module needing one is
# skipped when it is not installed here (the core, `import torch_input_ckpt`, needs none of them: checked above).
OPTIONAL = {"lightning", "pytorch_lightning", "lightning_fabric", "transformers", "accelerate"}
OPTIONAL |= {"pyarrow", "datasets", "torchtitan", "matplotlib"}
OPTIONAL |= {"fsspec", "s3fs", "botocore", "boto3", "aiobotocore", "aiohttp"}


def check_imports(installed: Path) -> None:
    """Every name of __all__ resolves, and every installed module imports (a subpackage without its files, or a
    dependency the wheel does not declare, fails here); modules of an extra not installed are skipped, named."""
    import torch_input_ckpt

    for name in torch_input_ckpt.__all__:
        if getattr(torch_input_ckpt, name, None) is None:
            fail(f"torch_input_ckpt.{name} is in __all__ but not importable")
    skipped: dict[str, str] = {}
    modules = sorted(installed.rglob("*.py"))
    for path in modules:
        parts = path.relative_to(installed.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        try:
            importlib.import_module(module)
        except ImportError as error:
            # ModuleNotFoundError of an extra's package, or the entry module's own message naming the extra.
            missing = (error.name or "").split(".")[0]
            extra = "pip install 'torch_input_ckpt[" in str(error)
            if missing not in OPTIONAL and not extra:
                fail(f"{module} does not import: {error!r}")
            if extra and all(importlib.util.find_spec(name) for name in ("lightning", "pytorch_lightning")):
                fail(f"{module} asks for an extra that is installed: {error}")
            skipped[module] = missing if missing in OPTIONAL else str(error).rsplit("pip install ", 1)[-1]
    if "torch_input_ckpt.lightning" in skipped:
        print("wheel-smoke: pytorch_lightning is not installed here: torch_input_ckpt.lightning not imported")
    print(
        f"wheel-smoke: {len(torch_input_ckpt.__all__)} public names; {len(modules) - len(skipped)} of {len(modules)}"
        f" modules imported; skipped for an extra not installed: "
        + (", ".join(f"{m} ({n})" for m, n in sorted(skipped.items())) or "none")
    )


def save_and_restore(directory: Path) -> None:
    """A map-style loader, two steps checkpointed through files, restored into a fresh loader: the same rest."""
    from torch_input_ckpt import InputCheckpointer, ResumableDataLoader

    def loader() -> ResumableDataLoader:
        return ResumableDataLoader(list(range(20)), batch_size=4, shuffle=True, seed=0)

    uninterrupted = [b.tolist() for b in loader()]
    first = loader()
    with InputCheckpointer(directory, first, every_n_steps=1) as ckpt:
        if ckpt.restore_or_save_initial() is not None:
            fail(f"a fresh directory {directory} restored a checkpoint")
        batches = iter(first)
        seen = [next(batches).tolist() for _ in range(2)]
        for step in (1, 2):
            ckpt.after_step(step)
    resumed = loader()
    with InputCheckpointer(directory, resumed, every_n_steps=1) as ckpt:
        if (step := ckpt.restore()) != 2:
            fail(f"restored step {step}, expected 2")
        rest = [b.tolist() for b in resumed]
    if seen + rest != uninterrupted:
        fail(f"resumed order {seen + rest} differs from the uninterrupted {uninterrupted}")
    print(f"wheel-smoke: saved and restored step 2 in {directory}; the rest of the epoch matches")


def run(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        fail(f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def check_cli(directory: Path) -> None:
    """``python -m torch_input_ckpt`` and the console script, with ``inspect`` on the checkpoints just written."""
    if "inspect" not in run([sys.executable, "-m", PACKAGE, "--help"]):
        fail("python -m torch_input_ckpt --help does not name the inspect command")
    script = Path(sys.executable).parent / "torch-input-ckpt"
    if not script.is_file() or shutil.which("torch-input-ckpt", path=str(script.parent)) is None:
        fail(f"the console script {script} is not installed")
    if "inspect" not in run([str(script), "--help"]):
        fail("torch-input-ckpt --help does not name the inspect command")
    report = json.loads(run([sys.executable, "-m", PACKAGE, "inspect", str(directory), "--json"]))
    text = run([str(script), "inspect", str(directory)])
    if "newest step 2" not in text:
        fail(f"torch-input-ckpt inspect does not report step 2:\n{text}")
    print(f"wheel-smoke: CLI ok (--help, inspect: {len(json.dumps(report))} B of JSON, text report)")


def main() -> None:
    checkout = Path(sys.argv[1]).resolve()
    if Path.cwd().resolve() == checkout or checkout in Path.cwd().resolve().parents:
        fail(f"run from outside the checkout (cwd {Path.cwd()}), so that its sources cannot be imported")
    if os.environ.get("PYTHONPATH"):
        fail(f"PYTHONPATH is set ({os.environ['PYTHONPATH']}): the installed wheel alone must be tested")
    installed = check_installed_not_checkout(checkout)
    check_files(checkout, installed)
    check_imports(installed)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "input"
        save_and_restore(directory)
        check_cli(directory)
    print("wheel-smoke: ok")


if __name__ == "__main__":
    main()
