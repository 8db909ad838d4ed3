"""A Hypothesis state machine over whole pipelines, restored through the checkpoint file after changes.

It composes what users build (a plain map-style dataset, a ``Mixture`` of map-style sources, a
``Mixture`` of ``ShardedStream`` sources, one ``ShardedStream``, packed or not, over real JSON-lines and
``.npy`` shards; exclusions) and runs it rank by rank in lockstep (``World(rank, size)``, as the
in-process DDP tests do) with events in any order: stop anywhere, save through ``InputCheckpointer``,
restore into fresh objects with a change (``num_workers``, world size, batch size, weights, a source
added or removed, data appended, a shard rewritten in place), exclude samples.

What it checks is the README's contract, never today's behaviour:

- **resume equivalence** (no change, another ``num_workers``, batch size or world size): every global
  position delivered after the resume holds what the uninterrupted run (the old objects, never
  restored, run on beside) holds there — values and random draws;
- **exactly once** per epoch (plain dataset, stream) or per source epoch (mixture: a source epoch of a
  source of length ``n`` is its next ``n`` deliveries in global order, the one in progress at a growth
  finishing over the old length): nothing missing, nothing duplicated, nothing unknown — reported
  separately; padding (``DistributedSampler``'s rule) at most ``W - 1`` positions per segment;
- **a refusal** (``InputStateError`` or an error naming the changed file) for every other change, at
  the restore or at the first read of the changed data — never a silent difference.

Bounded in ``make test`` (fixed seed, ``derandomize``); ``make fuzz`` runs many more examples
(``HYPOTHESIS_FUZZ_EXAMPLES``).
"""

from __future__ import annotations

import copy
import gc
import logging
import os
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from torch_input_ckpt import InputStateError
from torch_input_ckpt.stream.shards import write_index

from tests.support.pipelines import (
    NAMES,
    Run,
    build_loaders,
    build_source,
    checkpointers,
    environ_examples,
    source_of,
    source_units,
    write_shard,
    write_stream,
)

EXAMPLES = environ_examples(60)
FUZZING = "HYPOTHESIS_FUZZ_EXAMPLES" in os.environ
# Changes after which the README promises the identical stream (by global position).
EXACT = {"none", "workers", "batch", "world"}
# Worker processes cost a start-up each: a small share of the examples use them.
WORKERS = st.sampled_from([0] * 9 + [1, 2])


def _unsorted(names: list[str]) -> list[str]:
    """Source names in an order that is not alphabetical (a dict order that sorting would change)."""
    if len(names) > 1 and names == sorted(names):
        names = names[::-1]
    return names


@st.composite
def stream_source(draw: Any, pack: bool | None = None) -> dict[str, Any]:
    fmt = draw(st.sampled_from(["jsonl", "npy"]))
    sizes = draw(st.lists(st.integers(0, 4), min_size=2, max_size=4).filter(lambda s: sum(s) >= 2))
    packed = draw(st.booleans()) if pack is None else pack
    return {
        "format": fmt,
        "sizes": sizes,
        "pack_to": draw(st.sampled_from([3, 4])) if packed else None,
        "window": draw(st.sampled_from([0, 2])),
        "seed": draw(st.integers(0, 3)),
    }


@st.composite
def configs(draw: Any, kind: str) -> dict[str, Any]:
    config: dict[str, Any] = {
        "kind": kind,
        "batch": draw(st.integers(1, 3)),
        "world": draw(st.integers(1, 3)),
        "seed": draw(st.integers(0, 3)),
    }
    config["workers"] = draw(WORKERS) if config["world"] == 1 else 0
    if kind == "plain":
        config["sources"] = {"plain": {"length": draw(st.integers(3, 13))}}
    elif kind == "stream":
        config["sources"] = {draw(st.sampled_from(NAMES)): draw(stream_source())}
    else:
        names = _unsorted(draw(st.permutations(NAMES).map(list))[: draw(st.integers(2, 3))])
        if kind == "mixture":
            config["sources"] = {name: {"length": draw(st.integers(1, 7))} for name in names}
        else:
            config["sources"] = {name: draw(stream_source()) for name in names[:2]}
        config["weights"] = {name: draw(st.integers(1, 4)) for name in config["sources"]}
        config["samples_per_epoch"] = draw(st.integers(4, 14))
    return config


class Pipelines(RuleBasedStateMachine):
    """One pipeline, its uninterrupted twin while exactness is promised, and everything delivered."""

    kind = "plain"
    base: Path | None = None  # set by the test from tmp_path

    def __init__(self) -> None:
        super().__init__()
        self.quiet = Quiet()
        # Under pytest's own temporary directory (it keeps the last runs and removes older ones): a background
        # write still in flight at teardown can leave an empty folder that rmtree could not remove.
        self.root = Path(tempfile.mkdtemp(prefix="state-machine-", dir=self.base))
        self.directory = self.root / "ckpt"
        self.directory.mkdir()
        self.step = 0
        self.over = False  # a refusal ended the run (as it ends a user's job)
        self.pending_error: str | None = None  # a changed shard's file name: reading it must fail naming it
        self.run: Run | None = None
        self.twin: Run | None = None  # the uninterrupted run, while the contract says "identical"
        self.twin_seen: dict[tuple[int, int], Any] = {}
        self.live_seen: dict[tuple[int, int], Any] = {}
        self.delivered: list[tuple[int, int, list[Any]]] = []  # (epoch, position, units), no padding
        self.padding: Counter[tuple[int, int]] = Counter()  # per (segment, epoch): padding positions
        self.segment = 0
        self.segment_world: dict[int, int] = {}
        self.exclusions: list[tuple[int, set[int]]] = []  # (first epoch, indices)
        self.universes: dict[str, list[tuple[int, int, set[Any]]]] = {}  # (g at the change, length, units)
        self.ever: set[str] = set()

    # -- set-up ---------------------------------------------------------------------------------------

    def _start(self, config: dict[str, Any]) -> None:
        for name, source in config["sources"].items():
            if "sizes" in source:
                source["dir"] = str(self.root / f"{name}-data")
                write_stream(Path(source["dir"]), name, source["format"], source["sizes"])
            self._universe(name, source, 0)
        self.config = config
        loaders = build_loaders(config)
        self.ckpts = checkpointers(self.directory, loaders)
        self.run = Run(config, loaders, 0, 0)
        self.workers_used = config["workers"] > 0
        self.segment_world[self.segment] = config["world"]

    def _universe(self, name: str, source: dict[str, Any], g: int) -> None:
        length = len(build_source({"sources": {name: source}}, name))
        self.universes.setdefault(name, []).append((g, length, source_units(name, source)))
        self.ever.add(name)

    def teardown(self) -> None:
        self.quiet.close()
        for ckpt in getattr(self, "ckpts", []):
            ckpt.close()
        self.run = self.twin = None
        if self.workers_used:
            gc.collect()  # loaders with workers are in reference cycles: shut their workers down here
        shutil.rmtree(self.root, ignore_errors=True)

    # -- running ----------------------------------------------------------------------------------------

    @precondition(lambda self: self.run is not None and not self.over and not self.run.finished)
    @rule(steps=st.integers(1, 4))
    def advance(self, steps: int) -> None:
        for _ in range(steps):
            try:
                got = self.run.step()
            except Exception as error:  # noqa: BLE001 - only an error naming the changed shard is expected
                if self.pending_error is not None and self.pending_error in str(error):
                    self.over = True
                    return
                raise
            if got is None:
                break
            self.step += 1
            for epoch, position, units, value in got:
                if position >= self.run.epoch_length(epoch):
                    self.padding[(self.segment, epoch)] += 1
                    continue
                self.delivered.append((epoch, position, units))
                self.live_seen[(epoch, position)] = value
        self._compare_with_twin()

    @precondition(lambda self: self.run is not None and not self.over and not self.run.finished)
    @rule()
    def advance_to_the_epochs_end(self) -> None:
        """Stop exactly after an epoch's last batch (the stop that normalises to the next epoch)."""
        epoch = self.run.epoch
        for _ in range(64):
            if (
                self.over
                or self.run.finished
                or self.run.epoch != epoch
                or self.run.cursor() >= self.run.epoch_length(epoch)
            ):
                return
            self.advance(1)

    @precondition(lambda self: self.run is not None and not self.over and not self.run.finished)
    @rule(steps=st.integers(5, 12))
    def advance_far(self, steps: int) -> None:
        self.advance(steps)

    def _workers_alive(self) -> bool:
        runs = [r for r in (self.run, self.twin) if r is not None]
        return any(loader.num_workers > 0 for r in runs for loader in r.loaders)

    def _compare_with_twin(self) -> None:
        if self.twin is None:
            return
        target = (self.run.epoch, self.run.cursor())
        while not self.twin.finished and (self.twin.epoch, self.twin.cursor()) < target:
            got = self.twin.step()
            for epoch, position, _, value in got or []:
                if position < self.twin.epoch_length(epoch):
                    self.twin_seen[(epoch, position)] = value
        for key, value in self.live_seen.items():
            assert key in self.twin_seen, f"epoch {key[0]} position {key[1]}: not delivered by the uninterrupted run"
            assert value == self.twin_seen[key], (
                f"epoch {key[0]} position {key[1]} after the resume: {value}, uninterrupted: {self.twin_seen[key]}"
            )
        self.live_seen.clear()

    @precondition(lambda self: self.run is not None and (self.over or self.run.finished))
    @rule()
    def after_the_end(self) -> None:
        """Nothing is left to do once the run ended (a refusal, or its last epoch)."""

    # -- save, change, restore ----------------------------------------------------------------------------

    @precondition(lambda self: self.run is not None and not self.over)
    @rule(change=st.sampled_from(sorted(EXACT)), data=st.data())
    def restore_same_data(self, change: str, data: Any) -> None:
        new = copy.deepcopy(self.config)
        if change == "workers":
            new["workers"] = data.draw(WORKERS) if new["world"] == 1 else 0
        elif change == "batch":
            new["batch"] = data.draw(st.integers(1, 4))
        elif change == "world":
            new["world"] = data.draw(st.integers(1, 3))
            new["workers"] = new["workers"] if new["world"] == 1 else 0
        self._restore(new, refused=None)

    @precondition(lambda self: self.run is not None and not self.over and self.config["kind"] in ("mixture", "streams"))
    @rule(data=st.data())
    def restore_with_new_weights(self, data: Any) -> None:
        new = copy.deepcopy(self.config)
        new["weights"] = {name: data.draw(st.integers(1, 5)) for name in new["sources"]}
        self._restore(new, refused=None)

    @precondition(lambda self: self.run is not None and not self.over and self.config["kind"] in ("mixture", "streams"))
    @rule(data=st.data())
    def restore_with_a_source_added_or_removed(self, data: Any) -> None:
        new = copy.deepcopy(self.config)
        absent = [name for name in NAMES if name not in new["sources"]]
        if len(new["sources"]) > 1 and (not absent or data.draw(st.booleans())):
            del new["sources"][(gone := data.draw(st.sampled_from(sorted(new["sources"]))))]
            del new["weights"][gone]
            self.retired = getattr(self, "retired", {})
            self.retired[gone] = self.config["sources"][gone]
        else:
            name = data.draw(st.sampled_from(absent))
            back = getattr(self, "retired", {}).pop(name, None)
            if back is not None:
                new["sources"][name] = back  # added back: it continues where it stopped
            elif self.config["kind"] == "mixture":
                new["sources"][name] = {"length": data.draw(st.integers(1, 6))}
            else:
                source = data.draw(stream_source())
                source["dir"] = str(self.root / f"{name}-data")
                write_stream(Path(source["dir"]), name, source["format"], source["sizes"])
                new["sources"][name] = source
            new["weights"][name] = data.draw(st.integers(1, 4))
            if name not in self.ever:
                self._universe(name, new["sources"][name], 0)
        self._restore(new, refused=None)

    # A shard rewritten behind the index's back stays so until its read fails: no other data change meanwhile
    # (re-indexing it would make it a legitimately changed shard). Shard files change only while no worker of
    # the stopped run or of its uninterrupted twin is alive: their prefetching would read the files mid-change,
    # which a job stopped between two runs never does.
    @precondition(
        lambda self: (
            self.run is not None
            and not self.over
            and self.pending_error is None
            and (self.config["kind"] in ("plain", "mixture") or not self._workers_alive())
        )
    )
    @rule(data=st.data())
    def restore_after_appending_data(self, data: Any) -> None:
        """Data appended between the runs: a plain dataset (without ``allow_growth``) and a stream alone
        refuse it; a mixture (``allow_growth=True``) finishes the source epoch in progress over the old
        length — or refuses, naming the source, where it cannot keep that exact (packed streams)."""
        new = copy.deepcopy(self.config)
        name = data.draw(st.sampled_from(sorted(new["sources"])))
        source = new["sources"][name]
        if "length" in source:
            source["length"] += data.draw(st.integers(1, 4))
        else:
            shard = len(source["sizes"])
            size = data.draw(st.integers(1, 3))
            added = write_shard(Path(source["dir"]), name, source["format"], shard, size)
            _reindex(source)
            source["sizes"].append(size)

        def undo() -> None:  # the user takes the new data out again (and re-indexes)
            if "sizes" in source:
                added.unlink()
                _reindex(source)
            if self.config["kind"] not in ("plain", "stream"):
                self.universes[name].pop()

        if self.config["kind"] in ("plain", "stream"):
            # The refusal names the opt-in (a plain dataset) or the stream whose shards changed.
            refused = "ShardedStream" if self.config["kind"] == "stream" else "allow_growth"
            self._restore(new, refused=refused, undo=undo)
            return
        g = sum(1 for _, _, units in self.delivered if source_of(units[0]) == name) if self.delivered else 0
        self._universe(name, source, g)
        # Packed streams cannot keep their numbering over appended data: a refusal naming the source is
        # the contract's other answer (issue 21 case 6); accepting is checked for exactly-once.
        self._restore(new, refused=None, may_refuse=name, undo=undo)

    @precondition(
        lambda self: (
            self.run is not None
            and not self.over
            and any(s.get("length", 0) >= 2 for s in self.config["sources"].values())
        )
    )
    @rule(data=st.data())
    def restore_after_shrinking_a_source(self, data: Any) -> None:
        """A map-style source shorter than when saved: refused, naming both lengths (README: "a shrunk source")."""
        new = copy.deepcopy(self.config)
        names = sorted(name for name, s in new["sources"].items() if s.get("length", 0) >= 2)
        source = new["sources"][data.draw(st.sampled_from(names))]
        old = source["length"]
        source["length"] = data.draw(st.integers(1, old - 1))
        self._restore(new, refused=[str(old), str(source["length"])], undo=lambda: None)

    @precondition(
        lambda self: (
            self.run is not None
            and not self.over
            and self.pending_error is None
            and not self._workers_alive()
            and any("sizes" in s for s in self.config["sources"].values())
        )
    )
    @rule(data=st.data(), same_stat=st.booleans())
    def restore_after_rewriting_a_shard(self, data: Any, same_stat: bool) -> None:
        """A shard rewritten in place between the runs. With another size: refused, naming the file. With
        the same size and modification time (``cp -p``) but fewer documents: refused, or an error naming
        the shard when it is read — never an epoch that silently ends early (issue 21 case 2)."""
        streams = sorted(name for name, s in self.config["sources"].items() if "sizes" in s)
        name = data.draw(st.sampled_from(streams))
        source = self.config["sources"][name]
        candidates = [i for i, n in enumerate(source["sizes"]) if n >= 2 and source["format"] == "jsonl"]
        if same_stat and not candidates:
            same_stat = False
        directory = Path(source["dir"])
        if same_stat:
            shard = data.draw(st.sampled_from(candidates))
            path = directory / f"part-{shard:03d}.jsonl"
            stat = path.stat()
            original = path.read_bytes()
            lines = path.read_text().splitlines(keepends=True)
            shorter = "".join(lines[:-1])
            shorter = shorter[:-1] + " " * (stat.st_size - len(shorter)) + "\n"  # JSON allows the spaces
            path.write_text(shorter)
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
            assert path.stat().st_size == stat.st_size
            self.pending_error = path.name

            def undo_short() -> None:
                path.write_bytes(original)
                _reindex(source)
                self.pending_error = None

            self._restore(copy.deepcopy(self.config), refused=None, may_refuse=path.name, undo=undo_short)
        else:
            shard = data.draw(st.integers(0, len(source["sizes"]) - 1))
            path = directory / f"part-{shard:03d}.{source['format']}"
            write_shard(directory, name, source["format"], shard, source["sizes"][shard] + 1)

            def undo_longer() -> None:
                write_shard(directory, name, source["format"], shard, source["sizes"][shard])
                _reindex(source)

            self._restore(copy.deepcopy(self.config), refused=path.name, undo=undo_longer)

    @precondition(lambda self: self.run is not None and not self.over and self.config["kind"] != "plain")
    @rule()
    def restore_into_a_plain_dataset(self) -> None:
        """The state of a stream or mixture (it records the dataset's own order) loaded into a loader over a plain
        dataset of the same length: refused (issue 21 case 5), never a silent other order."""
        new = copy.deepcopy(self.config)
        length = len(self.run.loaders[0].dataset)
        new.update(kind="plain", sources={"plain": {"length": length}})
        new.pop("weights", None)
        self._restore(new, refused="", undo=lambda: None)

    @precondition(lambda self: self.run is not None and not self.over and self.config["kind"] == "plain")
    @rule(data=st.data())
    def exclude(self, data: Any) -> None:
        """``loader.exclude`` on every rank (and on the uninterrupted twin): from the next epoch, or at
        once at an epoch's start."""
        length = self.config["sources"]["plain"]["length"]
        indices = set(data.draw(st.lists(st.integers(0, length - 1), min_size=1, max_size=2)))
        excluded = set().union(*(s for _, s in self.exclusions)) | indices
        if len(excluded) >= length:
            return
        run = self.run
        if self.twin is not None and (self.twin.epoch, self.twin.cursor()) != (run.epoch, run.cursor()):
            return  # the twin ran ahead (another batch size): its "next epoch" may be another one
        first = run.epoch + 1 if run.cursor() > 0 else run.epoch
        self.exclusions.append((first, indices))
        for loader in run.loaders + (self.twin.loaders if self.twin is not None else []):
            loader.exclude(sorted(indices))

    def _restore(
        self,
        new: dict[str, Any],
        *,
        refused: str | list[str] | None,
        may_refuse: str | None = None,
        undo: Callable[[], None] | None = None,
    ) -> None:
        """Save every rank through its checkpointer, build fresh objects of ``new`` and restore them from
        the files. ``refused``: the restore must raise ``InputStateError`` naming it; ``may_refuse``: it
        may (else it must be exact or exactly-once, as checked by the invariants). ``undo``: after a refusal,
        what the user does to take the change back; then the unchanged pipeline is restored (fresh objects
        again) and the run goes on, to be identical to the uninterrupted one."""
        for ckpt in self.ckpts:
            ckpt.save(self.step)
        for ckpt in self.ckpts:
            ckpt.close()
        epoch, cursor = self.run.epoch, self.run.cursor()
        same = new["sources"] == self.config["sources"] and new.get("weights") == self.config.get("weights")
        exact = same and refused is None and may_refuse is None
        self.ckpts = []
        try:
            loaders = build_loaders(new)
            self.ckpts = checkpointers(self.directory, loaders)
            for ckpt in self.ckpts:
                ckpt.restore(self.step)
        except InputStateError as error:
            for ckpt in self.ckpts:
                ckpt.close()
            expected = refused if refused is not None else may_refuse
            if expected is None:
                raise
            for word in [expected] if isinstance(expected, str) else expected:
                assert word in str(error), f"the refusal does not name {word!r}: {error}"
            self.ckpts = []
            if undo is None:
                self.over = True
                return
            undo()
            self._restore(copy.deepcopy(self.config), refused=None)
            return
        assert refused is None, (
            f"changed between the runs ({refused or 'the pipeline: ' + new['kind']!r}) and the restore accepted it"
            " silently"
        )
        if exact:
            if self.twin is None:
                self.twin, self.twin_seen = self.run, {}
        else:
            self.twin, self.twin_seen = None, {}
        self.live_seen.clear()
        self.config = new
        self.segment += 1
        self.segment_world[self.segment] = new["world"]
        self.run = Run(new, loaders, epoch, cursor)
        self.workers_used |= new["workers"] > 0

    # -- the contract -------------------------------------------------------------------------------------

    @invariant()
    def padding_is_distributed_samplers(self) -> None:
        for (segment, epoch), count in self.padding.items():
            world = self.segment_world[segment]
            assert count <= world - 1, f"epoch {epoch}: {count} padding positions on {world} rank(s)"

    @invariant()
    def exactly_once(self) -> None:
        if self.run is None:
            return
        if self.config["kind"] in ("plain", "stream"):
            self._exactly_once_per_epoch()
        else:
            self._exactly_once_per_source_epoch()

    def _complete(self, epoch: int) -> bool:
        run = self.run
        return epoch < run.epoch or run.finished or (epoch == run.epoch and run.cursor() >= run.epoch_length(epoch))

    def _exactly_once_per_epoch(self) -> None:
        name = next(iter(self.universes))
        universe = self.universes[name][0][2]
        per_epoch: dict[int, list[Any]] = defaultdict(list)
        for epoch, _, units in self.delivered:
            per_epoch[epoch].extend(units)
        for epoch, seen in sorted(per_epoch.items()):
            expected = universe
            if self.config["kind"] == "plain":
                gone = set().union(*(s for first, s in self.exclusions if first <= epoch))
                expected = {u for u in universe if int(u.split(":")[1]) not in gone}
            _check(f"epoch {epoch}", seen, expected, self._complete(epoch))
        if self.run.finished:
            assert sorted(per_epoch) == list(range(len(per_epoch))), f"epochs delivered: {sorted(per_epoch)}"

    def _exactly_once_per_source_epoch(self) -> None:
        per_source: dict[str, list[list[Any]]] = defaultdict(list)
        for _, _, units in sorted(self.delivered, key=lambda d: (d[0], d[1])):
            per_source[source_of(units[0])].append(units)
        for name, items in per_source.items():
            changes = self.universes[name]
            g, start = 0, 0
            while start < len(items):
                # The source epoch starting at sample number `start` has the length of the newest change
                # made at or before `start` (one in progress keeps its length).
                _, length, universe = [c for c in changes if c[0] <= start][-1]
                chunk = items[start : start + length]
                seen = [u for units in chunk for u in units]
                complete = len(chunk) == length
                _check(f"{name} source epoch {g} (samples {start}..{start + len(chunk) - 1})", seen, universe, complete)
                start += length
                g += 1


class Quiet:
    """The restore's WARNING line, once per rank and restore, silenced for the machine's runs."""

    def __init__(self) -> None:
        self.logger = logging.getLogger("torch_input_ckpt")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def close(self) -> None:
        self.logger.setLevel(self.level)


def _reindex(source: dict[str, Any]) -> None:
    write_index(source["dir"], "tokens" if source["format"] == "jsonl" else None)


def _check(what: str, seen: list[Any], expected: set[Any], complete: bool) -> None:
    counts = Counter(seen)
    duplicated = sorted(str(u) for u, n in counts.items() if n > 1)
    unknown = sorted(str(u) for u in counts if u not in expected)
    assert not duplicated, f"{what}: delivered more than once: {duplicated}"
    assert not unknown, f"{what}: not in the data: {unknown}"
    if complete:
        missing = sorted(str(u) for u in expected - set(counts))
        assert not missing, f"{what}: never delivered: {missing}"


def _settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        stateful_step_count=12,
        deadline=None,
        derandomize=not FUZZING,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
        # make test stays bounded when it fails (shrinking a failing run of pipelines takes minutes): it reports
        # the failing sequence as found; make fuzz shrinks it to a minimal one.
        phases=list(Phase) if FUZZING else [Phase.explicit, Phase.reuse, Phase.generate],
    )


def _machine(kind: str, share: float) -> type[RuleBasedStateMachine]:
    machine = type(f"Pipelines_{kind}", (Pipelines,), {"kind": kind})

    def build(self: Pipelines, config: dict[str, Any]) -> None:
        self._start(config)

    machine.build = initialize(config=configs(kind))(build)  # type: ignore[attr-defined]
    machine.TestCase.settings = _settings(max(1, int(EXAMPLES * share)))
    return machine


# 200 examples in all in make test: a share per pipeline kind.
PlainMachine = _machine("plain", 0.7)
MixtureMachine = _machine("mixture", 0.9)
StreamMachine = _machine("stream", 0.7)
StreamsMixtureMachine = _machine("streams", 1.0)


@pytest.mark.fuzz
@pytest.mark.parametrize("machine", [PlainMachine, MixtureMachine, StreamMachine, StreamsMixtureMachine])
def test_state_machine(machine: type[Pipelines], tmp_path: Path) -> None:
    machine.base = tmp_path
    machine.TestCase().runTest()
