"""Figures 16-17: input checkpoints on object storage (moto's S3 server on loopback) against the local disk.

16. How long ``after_step`` blocks the training loop when it saves, the checkpoint on the S3 server vs on disk: the
    upload runs on the background writer, so the call costs what it costs on disk (the target is < 1 ms).
17. A restore of W ranks from an object prefix (simulated: W ranks' objects written by the benchmark, then what the
    planning rank and the other ranks run): the requests made (counted by a logging proxy in front of the server)
    and the time, with the planner's reads 32 at a time and one at a time, and the same restore from a local disk.

The server is the tests' (tests/support/s3server.py: moto's standalone server in a child process); its requests
cost 5-20 ms each on this shared machine, far more than a real store's per-request cost in a data centre is not:
the request counts are what carries over, the times are loopback's.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .harness import Config, Figure, IndexDataset, Target, collect, fmt_ratio, fmt_time, median_of

BATCH_SIZE = 64
SAVING_TARGET = 1e-3
STEP_SECONDS = 0.005  # stands in for a training step's compute
EVERY = 20  # a save every 100 ms of training: the upload (5 requests) finishes before the next one
STEP = 300  # the step every simulated rank saved


def _loop(checkpointer: Any, loader: Any, steps: int) -> tuple[list[float], list[float]]:
    saving, quiet = [], []
    it = iter(loader)
    for step in range(1, steps + 1):
        next(it)
        time.sleep(STEP_SECONDS)
        start = time.perf_counter()
        saved = checkpointer.after_step(step)
        (saving if saved else quiet).append(time.perf_counter() - start)
    return saving, quiet


def measure_blocking(params: dict[str, Any]) -> dict[str, Any]:
    """Child side: a training loop saving every ``EVERY`` steps to ``params["where"]``."""
    from torch_input_ckpt import InputCheckpointer, ResumableDataLoader

    steps = params["steps"]
    loader = ResumableDataLoader(IndexDataset((steps + 1) * BATCH_SIZE), batch_size=BATCH_SIZE, shuffle=True)  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory() as local:
        where = params["url"] if params["where"] == "s3" else local
        options = params["options"] if params["where"] == "s3" else None
        with InputCheckpointer(where, loader, every_n_steps=EVERY, keep_last=3, storage_options=options) as ckpt:
            saving, quiet = _loop(ckpt, loader, steps)
            uploads = []
            for extra in range(5):  # one save's full cost on the writer thread: save, then wait for it
                start = time.perf_counter()
                ckpt.save(steps + 1 + extra)
                ckpt.flush()
                uploads.append(time.perf_counter() - start)
    ordered = sorted(saving)
    return {
        "saving_median": statistics.median(saving),
        "saving_p95": ordered[int(0.95 * (len(ordered) - 1))],
        "quiet_median": statistics.median(quiet),
        "saves": len(saving),
        "upload_median": statistics.median(uploads),
    }


def _write_ranks(world: int, put: Any) -> None:
    """Every rank's checkpoint of STEP and its pointer, as the checkpointer writes them (4 writes at a time)."""
    from torch_input_ckpt import ResumableSampler
    from torch_input_ckpt.store import files
    from torch_input_ckpt.store.files import InputFile

    def one(rank: int) -> None:
        sampler = ResumableSampler(10**6, seed=0, num_replicas=world, rank=rank)
        data = files.encode_checkpoint(
            rank=rank, world_size=world, step=STEP, states={"input": sampler.state_dict()}, external=[]
        )
        put(InputFile(rank, STEP).name, data)
        put(InputFile.pointer_name(rank), f"latest: {InputFile(rank, STEP).name}\nstep: {STEP}\n".encode())

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(world)))


def _restore(directory: Any, world: int, others: int) -> dict[str, Any]:
    """What the ranks run at a restore: the plan on rank 0, then one file on each of ``others`` other ranks."""
    from torch_input_ckpt.store import files
    from torch_input_ckpt.store.planner import plan_restore

    start = time.perf_counter()
    plan = plan_restore(directory, world, rank=0)
    planning = time.perf_counter() - start
    assert plan is not None and plan.step == STEP, plan
    start = time.perf_counter()
    for rank in range(1, others + 1):
        files.read_checkpoint(plan.path(directory, rank))
    return {"planning": planning, "per_other": (time.perf_counter() - start) / others, "planner_reads": plan.reads}


def measure_restore(params: dict[str, Any]) -> dict[str, Any]:
    """Child side: write W ranks' checkpoint, then restore it (timed), then again through the counting proxy."""

    world, others = params["world"], params["others"]
    if params["where"] == "local":
        with tempfile.TemporaryDirectory() as name:
            _write_ranks(world, lambda file, data: (Path(name) / file).write_bytes(data))
            return {**_restore(Path(name), world, others), "planner_requests": None, "other_requests": None}
    from torch_input_ckpt.remote import ObjectStore
    from torch_input_ckpt.store.directory import ObjectDirectory

    from tests.support.s3server import FaultProxy, S3Server

    url, options = params["url"], params["options"]
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    client = S3Server(options["endpoint_url"]).client()  # setting up: not the code under test's client
    _write_ranks(world, lambda file, data: client.put_object(Bucket=bucket, Key=f"{prefix}/{file}", Body=data))
    timed = _restore(ObjectDirectory(url, ObjectStore(options)), world, others)
    with FaultProxy(options["endpoint_url"]) as proxy:  # the same restore, every request logged
        counted = ObjectDirectory(url, ObjectStore({**options, "endpoint_url": proxy.endpoint_url}))
        from torch_input_ckpt.store import files
        from torch_input_ckpt.store.planner import plan_restore

        plan = plan_restore(counted, world, rank=0)
        planner_requests = len(proxy.requests())
        proxy.clear()
        assert plan is not None
        for rank in range(1, others + 1):
            files.read_checkpoint(plan.path(counted, rank))
        other_requests = len(proxy.requests()) / others
    return {**timed, "planner_requests": planner_requests, "other_requests": other_requests}


def measure(params: dict[str, Any]) -> dict[str, Any]:
    """Child side: one measurement of either figure."""
    return measure_blocking(params) if params["figure"] == "blocking" else measure_restore(params)


def run(cfg: Config) -> list[Figure]:
    """Figures 16 and 17, against one moto server started here."""
    from tests.support.s3server import running_server

    with running_server() as server:
        options = server.storage_options()
        bucket = server.bucket("bench")
        return [_blocking(cfg, bucket, options), _restore_figure(cfg, bucket, options)]


def _blocking(cfg: Config, bucket: str, options: dict[str, Any]) -> Figure:
    steps = 100 if cfg.quick else 600
    variants = [
        {"figure": "blocking", "where": where, "steps": steps, "url": f"s3://{bucket}/blocking-{i}", "options": options}
        for i, where in enumerate(("local", "s3"))
    ]
    results = collect("checkpoint_s3", variants, cfg, label=lambda v: f"after_step, {v['where']}")
    local, s3 = results
    fig = Figure(
        key="checkpoint_s3_blocking",
        title="16. Blocking time of a saving after_step: checkpoint on the loopback S3 server vs on local disk",
        about=(
            f"A loop of {steps} steps of `time.sleep({STEP_SECONDS})` standing in for the training step, "
            f"InputCheckpointer(every_n_steps={EVERY}); the after_step call alone is timed. The upload (file, "
            "pointer, a listing for pruning, a delete, the lease check: 5 requests) runs on the background writer; "
            "'one save, uploaded' is save() then flush(), the writer's whole cost of one save. S3: moto's server on "
            "127.0.0.1 (tests/support/s3server.py); local: ext4, with fsync."
        ),
        columns=[
            "checkpoint on",
            "saving step (median)",
            "saving step (p95)",
            "non-saving step (median)",
            "one save, uploaded (median)",
            "ratio S3 / disk (saving step)",
        ],
    )
    for name, reps in (("local disk", local), ("S3 (loopback moto)", s3)):
        fig.rows.append(
            [
                name,
                fmt_time(median_of(reps, "saving_median")),
                fmt_time(median_of(reps, "saving_p95")),
                fmt_time(median_of(reps, "quiet_median")),
                fmt_time(median_of(reps, "upload_median")),
                fmt_ratio(median_of(reps, "saving_median"), median_of(local, "saving_median")),
            ]
        )
    blocked = median_of(s3, "saving_median")
    fig.targets.append(
        Target(
            f"a saving step blocks under {fmt_time(SAVING_TARGET)} with the checkpoint on S3 (issue 25)",
            blocked < SAVING_TARGET,
            f"median {fmt_time(blocked)}, p95 {fmt_time(median_of(s3, 'saving_p95'))}",
        )
    )
    fig.data = {"variants": variants, "results": results}
    return fig


def _restore_figure(cfg: Config, bucket: str, options: dict[str, Any]) -> Figure:
    world = 64 if cfg.quick else 1024
    others = 16
    variants = [
        {
            "figure": "restore",
            "where": where,
            "world": world,
            "others": others,
            "url": f"s3://{bucket}/restore-{i}",
            "options": options,
        }
        for i, where in enumerate(("s3", "local"))
    ]
    results = collect(
        "checkpoint_s3",
        variants,
        cfg,
        reps=1 if cfg.quick else 2,
        label=lambda v: f"restore W={v['world']}, {v['where']}",
    )
    fig = Figure(
        key="checkpoint_s3_restore",
        title=f"17. Restore of W = {world:,} ranks from an object prefix (simulated): requests and time",
        about=(
            f"The benchmark writes the objects a job of {world:,} ranks leaves (one checkpoint and one pointer per "
            "rank), then runs what a restore runs: the plan on the planning rank (one listing, every rank's pointer, "
            f"every old rank's file of the chosen step, read and verified) and, on {others} other ranks, the one "
            "file the plan names. Requests are counted by a logging proxy in front of the server (a second, "
            "untimed pass); times are without the proxy. On an object store the planner keeps "
            "planner.PARALLEL_READS = 8 reads in flight; against moto on this 2-core machine that gains little (the "
            "server is CPU-bound at 10-30 ms a request), against a real store each read's latency overlaps the others'."
        ),
        columns=[
            "where",
            "planning time",
            "planner requests",
            "requests per other rank",
            "time per other rank",
        ],
    )
    for variant, reps in zip(variants, results, strict=True):
        requests = reps[-1]["planner_requests"]
        fig.rows.append(
            [
                "S3 (loopback moto)" if variant["where"] == "s3" else "local disk",
                fmt_time(median_of(reps, "planning")),
                f"{requests:,} ({reps[-1]['planner_reads']:,} reads)" if requests is not None else "—",
                f"{reps[-1]['other_requests']:g}" if requests is not None else "—",
                fmt_time(median_of(reps, "per_other")),
            ]
        )
    parallel = results[0][-1]
    fig.targets.append(
        Target(
            "a restore from an object prefix makes O(W) requests: 2 per old rank + the listing; 1 per other rank",
            parallel["planner_requests"] <= 2 * world + 10 and parallel["other_requests"] == 1,
            f"planner {parallel['planner_requests']:,} requests for W={world:,}; other ranks "
            f"{parallel['other_requests']:g} each",
        )
    )
    fig.data = {"variants": variants, "results": results}
    return fig
