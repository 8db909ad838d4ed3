"""``torch-input-ckpt inspect DIR``: a directory's input checkpoints per rank, and whether the ranks agree."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import InputStateError
from ..provenance.history import describe_checkpoint
from ..state.schema import BadSample, positions
from ..store import files
from ..store.files import InputFile
from ..store.planner import PlanError, plan_restore

__all__ = ["add_parser", "format_report", "inspect_directory", "run"]


# -- the report --------------------------------------------------------------------------------------


def inspect_directory(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Everything ``inspect`` prints, as plain JSON types (the ``--json`` output).

    Every file is read and verified; a damaged one is reported with its reason, never raised.
    """
    directory = Path(directory)
    by_rank = files.list_steps(directory)
    pointer_ranks = {r for e in os.scandir(directory) if (r := InputFile.parse_pointer_name(e.name)) is not None}
    ranks = [_rank_report(directory, rank, by_rank.get(rank, [])) for rank in sorted(set(by_rank) | pointer_ranks)]
    newest = {report["rank"]: (report["newest"] or {}).get("step") for report in ranks}
    valid_steps = [{f["step"] for f in report["files"] if f["valid"]} for report in ranks]
    common = set.intersection(*valid_steps) if valid_steps else set()
    return {
        "directory": str(directory),
        "ranks": ranks,
        "valid": bool(ranks) and all(step is not None for step in newest.values()),
        "all_ranks_share_newest": bool(ranks) and len(set(newest.values())) == 1 and None not in newest.values(),
        "newest_common_step": max(common) if common else None,
    }


def _rank_report(directory: Path, rank: int, steps: list[int]) -> dict[str, Any]:
    entries = []
    pinned = set(files.pinned_steps(directory, rank))
    for step in steps:
        path = directory / InputFile(rank, step).name
        entry: dict[str, Any] = {
            "step": step,
            "file": path.name,
            "bytes": _size(path),
            "valid": True,
            "problem": None,
            "pinned": step in pinned,
        }
        try:
            files.read_checkpoint(path)
        except files.FileVanishedError:
            continue  # pruned by a saver since the listing: not damage
        except InputStateError as error:
            entry.update(valid=False, problem=_reason(error, path))
        entries.append(entry)
    pointer: dict[str, Any] = {"file": InputFile.pointer_name(rank), "step": None, "problem": None}
    try:
        pointer["step"] = files.read_pointer(directory, rank)
        if pointer["step"] is None:
            pointer["problem"] = "missing"
    except InputStateError as error:
        pointer["problem"] = _reason(error, directory / pointer["file"])
    checkpoint, problems, uncommitted = _newest(directory, rank)
    newest = None
    if checkpoint is not None:
        newest = {
            "step": checkpoint.step,
            "file": checkpoint.path.name,
            "bytes": checkpoint.size,
            "saved_at": _saved_at(checkpoint.wall_time),
            "wall_time": checkpoint.wall_time,
            "world_size": checkpoint.world_size,
            "external": checkpoint.external,
            "components": {
                name: {
                    "kind": p.kind,
                    "epoch": p.epoch,
                    "position": p.position,
                    "unit": p.unit,
                    "bad_samples": _bad_samples(checkpoint.states[name]),
                }
                for name, p in positions(checkpoint.states).items()
            },
            "provenance": describe_checkpoint(checkpoint),
        }
    return {
        "rank": rank,
        "steps": steps,
        "files": entries,
        "pointer": pointer,
        "newest": newest,
        "uncommitted_steps": uncommitted,
        "problems": problems,
    }


def _newest(directory: Path, rank: int) -> tuple[files.InputCheckpoint | None, list[str], list[int]]:
    """What restore would pick for ``rank`` alone (the restore planner's answer), what it passed over, and
    the steps newer than the pointer."""
    try:
        plan = plan_restore(directory, 1, rank=rank, alone=True)
    except PlanError as error:
        return None, list(error.problems), [s for _, s in error.uncommitted]
    if plan is None:
        return None, [], []
    return plan.checkpoint, list(plan.problems), [s for _, s in plan.uncommitted]


def _bad_samples(state: Any) -> list[list[Any]]:
    """A loader state's skipped samples, ``[[epoch, key, error], ...]`` (read already checked them)."""
    if not isinstance(state, dict):
        return []
    return [bad.to_list() for bad in BadSample.list_from_state(state, "state")]


def _saved_at(wall_time: float) -> str:
    try:
        return datetime.fromtimestamp(wall_time, timezone.utc).isoformat(timespec="seconds")
    except (ValueError, OverflowError, OSError):  # read_checkpoint bounds it; never a traceback here
        return "?"


def _size(path: Path) -> int | None:
    try:
        return path.lstat().st_size  # of a symlink itself: nothing about its target is shown
    except OSError:
        return None


def _reason(error: InputStateError, path: Path) -> str:
    """The reason alone: our messages are ``"<path>: <reason>"``."""
    return str(error).removeprefix(f"{path}: ")


def format_report(report: dict[str, Any]) -> str:
    """The human-readable form of :func:`inspect_directory`'s report."""
    lines = [f"input checkpoints in {report['directory']}"]
    if not report["ranks"]:
        lines.append("  none found (expected files named input_<rank>-<step>.json)")
    for rank in report["ranks"]:
        lines += _rank_lines(rank)
    if report["ranks"]:
        lines += _agreement_lines(report)
    return "\n".join(lines)


def _configuration_lines(described: dict[str, Any] | None) -> list[str]:
    """The configuration ``samples`` computes from, in one or two lines (nothing for a non-loader)."""
    if not described:
        return []
    if "unavailable" in described:
        return [f"      samples: unavailable ({described['unavailable']})"]
    d = described
    sources = d["mixture_sources"]
    data = f"mixture {sources}" if sources else f"dataset length {d['dataset_length']}"
    if d.get("mixture_schedule"):
        data += f" (schedule ahead: {[(c['from_sample'], c['weights']) for c in d['mixture_schedule']]})"
    bps = d["batches_per_step"] if d["batches_per_step"] is not None else "? (not recorded yet)"
    lines = [
        f"      configuration: seed {d['seed']}, shuffle {d['shuffle']} ({d['order']}), world size {d['world_size']}, "
        f"batch size {d['batch_size']}, drop_last {d['drop_last']} (sampler {d['sampler_drop_last']}), {data}, "
        f"batches per step {bps}"
    ]
    if d["excluded"]:
        lines.append(f"      excluded samples (ranges added per epoch): {_ranges_text(d['excluded'])}")
    if d["skipped_steps"]:
        lines.append(f"      skipped steps: {d['skipped_steps']}")
    return lines


def _rank_lines(rank: dict[str, Any]) -> list[str]:
    steps = rank["steps"]
    lines = [f"rank {rank['rank']}: steps {', '.join(map(str, steps)) if steps else 'none'}"]
    for entry in rank["files"]:
        status = "ok" if entry["valid"] else f"DAMAGED: {entry['problem']}"
        pin = "  (pinned: kept until unpinned)" if entry.get("pinned") else ""
        lines.append(f"  {entry['file']}  {_bytes(entry['bytes'])}  {status}{pin}")
    pointer = rank["pointer"]
    if pointer["problem"] is None:
        lines.append(f"  {pointer['file']} -> step {pointer['step']}")
    else:
        lines.append(f"  {pointer['file']}: {pointer['problem']}")
    if rank["uncommitted_steps"]:
        lines.append(f"  steps {rank['uncommitted_steps']} are newer than the pointer (not committed; passed over)")
    newest = rank["newest"]
    if newest is None:
        lines.append("  newest: NONE VALID (restore would fail on this rank)")
        return lines
    return lines + _newest_lines(newest)


def _newest_lines(newest: dict[str, Any]) -> list[str]:
    lines = [
        f"  newest: step {newest['step']} ({newest['file']}, {_bytes(newest['bytes'])}), "
        f"saved {newest['saved_at']}, world size {newest['world_size'] if newest['world_size'] else '?'}"
    ]
    for name, comp in newest["components"].items():
        epoch = "?" if comp["epoch"] is None else comp["epoch"]
        where = "?" if comp["position"] is None else f"{comp['position']} ({comp['unit']})"
        lines.append(f"    {name} ({comp['kind']}): epoch {epoch}, position {where}")
        lines.extend(_configuration_lines(newest.get("provenance", {}).get(name)))
        lines.extend(_bad_sample_lines(comp.get("bad_samples") or []))
    lines += [f"    not captured: {item}" for item in newest["external"]]
    return lines


def _bad_sample_lines(bad: list[list[Any]], shown: int = 10) -> list[str]:
    """``bad samples: 3`` and one line per sample (the first ``shown``): epoch, key, error."""
    if not bad:
        return []
    lines = [f"      bad samples: {len(bad)} (skipped, on_error='skip')"]
    lines += [f"        epoch {epoch}, key {key}: {error}" for epoch, key, error in bad[:shown]]
    if len(bad) > shown:
        lines.append(f"        ... and {len(bad) - shown} more (--json lists them all)")
    return lines


def _agreement_lines(report: dict[str, Any]) -> list[str]:
    newest_steps = {r["rank"]: (r["newest"] or {}).get("step") for r in report["ranks"]}
    if report["all_ranks_share_newest"]:
        count = len(newest_steps)
        step = next(iter(newest_steps.values()))
        return [f"newest step {step} on every rank ({count} rank{'s' if count > 1 else ''})"]
    listed = ", ".join(f"rank {r} -> {'none' if s is None else s}" for r, s in newest_steps.items())
    common = report["newest_common_step"]
    return [
        f"ranks DISAGREE on the newest step: {listed}",
        f"newest step valid on every rank: {'none' if common is None else common}",
    ]


def _bytes(size: int | None) -> str:
    return "? B" if size is None else f"{size} B"


# -- command line ----------------------------------------------------------------------------------


def _ranges_text(excluded: list[Any], limit: int = 300) -> str:
    """``[[epoch, [start, stop, ...]], ...]`` as ``epoch 1: 3, 7-8; epoch 4: 20-29``, cut at ``limit`` characters."""
    parts = []
    for epoch, flat in excluded:
        ranges = (f"{a}" if b == a + 1 else f"{a}-{b - 1}" for a, b in zip(flat[::2], flat[1::2], strict=False))
        parts.append(f"epoch {epoch}: {', '.join(ranges)}")
    text = "; ".join(parts)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def add_parser(commands: Any) -> None:
    """Add the ``inspect`` subcommand to the ``torch-input-ckpt`` parser."""
    inspect = commands.add_parser(
        "inspect",
        help="per rank: steps on disk, the newest valid one, its epoch and position, damaged files",
        description=(
            "Exit status: 0 if every rank has a valid checkpoint, 1 if not, 2 for usage errors, "
            "3 for an internal error."
        ),
    )
    inspect.add_argument("directory", help="the directory given to InputCheckpointer")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    """Answer one ``inspect`` command: 0 if every rank has a valid checkpoint, 1 if not, 2 for a missing or
    unreadable directory, 3 for an internal error (one line, never a traceback)."""
    directory = Path(args.directory)
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        print(f"torch-input-ckpt: error: {args.directory} {what}", file=sys.stderr)
        return 2
    try:
        report = inspect_directory(directory)
    except OSError as error:
        print(f"torch-input-ckpt: error: cannot read {args.directory}: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # a bug of ours, not a file's: still one line, never a traceback
        print(f"torch-input-ckpt: internal error reading {args.directory}: {error!r}", file=sys.stderr)
        return 3
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if report["valid"] else 1
