"""Golden vectors: the order of every existing configuration, pinned bit for bit.

Written before the package was restructured (issue 23) and never regenerated: a change to any literal here
changes the data order of runs already in progress, whose checkpoints then resume onto another sequence. The
first keys are literals; the rest of each sequence is pinned by a digest of its JSON. Sources and shards have
names that are not in sorted order.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from torch_input_ckpt import Mixture, ResumableDataLoader, ResumableSampler, ShardedStream
from torch_input_ckpt.order.permutation import FeistelPermutation

from tests.support.mixture_files import Tagged


def digest(values: list) -> str:
    return hashlib.sha256(json.dumps(values, default=lambda t: t.tolist()).encode()).hexdigest()[:16]


def feistel(length: int, seed: int, epoch: int) -> list[int]:
    return FeistelPermutation(length, seed, epoch)(torch.arange(min(length, 2000))).tolist()


def sampler(seed: int, epoch: int, rank: int) -> list[int]:
    s = ResumableSampler(101, seed=seed, num_replicas=3, rank=rank)
    s.set_epoch(epoch)
    return list(s)


class Draws:
    """Each sample draws from torch, random and NumPy: the per-sample seeds, seen through the draws."""

    def __len__(self) -> int:
        return 40

    def __getitem__(self, i: int) -> tuple[int, int, int, int]:
        return (i, torch.randint(0, 2**31, ()).item(), random.getrandbits(31), int(np.random.randint(0, 2**31)))


def draws(num_workers: int) -> list[list[int]]:
    loader = ResumableDataLoader(Draws(), batch_size=4, shuffle=True, seed=5, num_workers=num_workers, collate_fn=list)
    return [list(x) for batch in loader for x in batch]


def mixture(epoch: int) -> list[str]:
    sources = {"web": Tagged("web", 5000), "code": Tagged("code", 1300), "math": Tagged("math", 17)}
    loader = ResumableDataLoader(
        Mixture(sources, {"web": 7, "code": 2, "math": 1}), batch_size=500, shuffle=True, seed=11, collate_fn=list
    )
    loader.set_epoch(epoch)
    return [x for batch in loader for x in batch]


@pytest.fixture(scope="module")
def shard_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("golden")
    npy, jl = root / "npy", root / "jl"
    npy.mkdir()
    jl.mkdir()
    for s, n in zip("qbxkam", [13, 0, 40, 7, 29, 1], strict=True):
        np.save(npy / f"{s}.npy", np.arange(n, dtype=np.int64) + 1000 * (ord(s) - 96))
    for s, n in zip("tdrg", [9, 17, 3, 12], strict=True):
        lines = [json.dumps({"id": f"{s}{k}", "tokens": [k] * (1 + (k * 7 + ord(s)) % 6)}) for k in range(n)]
        (jl / f"{s}.jsonl").write_text("".join(line + "\n" for line in lines))
    index = [sys.executable, "-m", "torch_input_ckpt", "index"]
    subprocess.run([*index, str(npy)], check=True, capture_output=True)
    subprocess.run([*index, str(jl), "--tokens", "tokens"], check=True, capture_output=True)
    return str(npy), str(jl)


def stream_values(stream: ShardedStream, epoch: int, num_workers: int = 0) -> list:
    loader = ResumableDataLoader(stream, batch_size=5, num_workers=num_workers, collate_fn=list)
    loader.set_epoch(epoch)
    return [x.tolist() if hasattr(x, "tolist") else x for batch in loader for x in batch]


FEISTEL = {
    (1, 0, 0): ([0], "d0bca111f8628137"),
    (7, 3, 0): ([0, 4, 2, 6, 3, 5, 1], "7aff06d7e66241c9"),
    (1000, 12345, 0): ([105, 264, 868, 879, 716, 623, 0, 418, 744, 898, 319, 167], "6a06c8d5785fa4a2"),
    (1000, 12345, 1): ([641, 339, 256, 916, 303, 342, 799, 225, 720, 152, 766, 647], "acd87a07e3b495da"),
    (1048579, 99, 4): (
        [1035521, 131045, 551197, 507680, 983603, 613281, 743426, 1005254, 578393, 483832, 563241, 609087],
        "91098c98d4ea3fd5",
    ),
}
SAMPLER = {
    (7, 0, 0): ([41, 90, 71, 55, 2, 47, 94, 91, 11, 92, 51, 27], "4e7a868f8abf0ca3"),
    (7, 0, 1): ([36, 58, 29, 32, 9, 48, 4, 6, 14, 49, 54, 15], "dad7c379a4a4ff56"),
    (7, 1, 0): ([82, 68, 67, 77, 72, 87, 81, 91, 44, 63, 59, 79], "83be1015297dd66a"),
    (0, 2, 2): ([60, 44, 75, 53, 89, 64, 14, 90, 39, 1, 36, 8], "b2d53f650bc5da20"),
}
DRAWS = (
    [
        [1, 598826188, 1438652163, 769298191],
        [8, 1108196932, 350144391, 1966567931],
        [14, 945112034, 381026522, 505659456],
        [26, 196314847, 1559407828, 785733684],
        [31, 378266979, 446576235, 1100982695],
        [24, 1135858331, 1945585355, 1734760855],
    ],
    "ccfa5dfb4990c362",
)
MIXTURE = {
    0: (
        [
            "web742",
            "code668",
            "web1001",
            "math12",
            "web2189",
            "web4771",
            "web3025",
            "web4554",
            "web1026",
            "web4588",
            "web3849",
            "web1908",
            "web2409",
            "code1289",
            "web160",
            "code368",
        ],
        ["code93", "web1030", "math11", "web869", "code250", "code553", "code779", "code951", "code702", "web4652"],
        "83d20b03dcda0546",
    ),
    1: (
        [
            "web1426",
            "web2423",
            "code508",
            "web3912",
            "code173",
            "web2533",
            "web462",
            "web3826",
            "web2202",
            "web1998",
            "web2633",
            "web687",
            "web4008",
            "code821",
            "web3066",
            "web4870",
        ],
        ["web1775", "web3665", "web3980", "code755", "web1578", "web3723", "web1589", "math9", "web1306", "web1561"],
        "0c84ddb4e18cfa5e",
    ),
}
NPY = {
    (3, 5, 4, 0): (
        [24004, 1003, 11001, 24000, 1002, 11000, 24001, 1004, 11003, 24002, 1000, 11002, 24003, 1001, 11004, 24009],
        "3bda92c327f15760",
    ),
    (3, 5, 4, 1): (
        [24001, 1004, 13000, 24000, 1002, 17000, 24003, 1001, 17001, 24004, 1000, 17002, 24002, 1003, 17003, 24008],
        "87a51f1fb4f258e9",
    ),
    (2, 0, 9, 0): (
        [
            11000,
            13000,
            11001,
            17000,
            11002,
            17001,
            11003,
            17002,
            11004,
            17003,
            11005,
            17004,
            11006,
            17005,
            24000,
            17006,
        ],
        "2dacf1b003f782a2",
    ),
    (4, 64, 1, 2): (
        [24028, 1021, 17012, 11001, 24019, 1010, 17004, 13000, 24018, 1022, 17003, 11003, 24036, 1007, 17007, 11000],
        "87a5b311b985d61c",
    ),
}
JSONL = (
    ["t0", "d2", "t1", "d3", "t2", "d1", "t3", "d0", "t4", "d5", "t5", "d4", "t6", "d7", "t7", "d6"],
    "34093a329070d4a3",
)
PACKED = (
    [
        {
            "input_ids": [2, 3, 3, 3, 3, 3, 4, 4],
            "position_ids": [3, 0, 1, 2, 3, 4, 0, 1],
            "document_ids": [19, 20, 20, 20, 20, 20, 21, 21],
        },
        {
            "input_ids": [0, 0, 0, 1, 1, 1, 1, 1],
            "position_ids": [2, 3, 4, 0, 1, 2, 3, 4],
            "document_ids": [0, 0, 0, 1, 1, 1, 1, 1],
        },
        {
            "input_ids": [0, 0, 1, 1, 1, 2, 2, 2],
            "position_ids": [0, 1, 0, 1, 2, 0, 1, 2],
            "document_ids": [17, 17, 18, 18, 18, 19, 19, 19],
        },
    ],
    "622c454fd07908e2",
)


@pytest.mark.parametrize("case", list(FEISTEL))
def test_feistel_permutation(case):
    values = feistel(*case)
    assert (values[:12], digest(values)) == FEISTEL[case]


@pytest.mark.parametrize("case", list(SAMPLER))
def test_sampler_order_per_rank(case):
    values = sampler(*case)
    assert (values[:12], digest(values)) == SAMPLER[case]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_per_sample_seeds(num_workers):
    values = draws(num_workers)
    assert (values[:6], digest(values)) == DRAWS


@pytest.mark.parametrize("epoch", [0, 1])
def test_mixture_layout_and_source_orders(epoch):
    values = mixture(epoch)
    assert (values[:16], values[4090:4100], digest(values)) == MIXTURE[epoch]


@pytest.mark.parametrize("case", list(NPY))
def test_stream_lanes_and_window_shuffle(shard_dirs, case):
    lanes, window, seed, epoch = case
    values = stream_values(ShardedStream(shard_dirs[0], lanes=lanes, window=window, seed=seed), epoch)
    assert (values[:16], digest(values)) == NPY[case]


def test_stream_jsonl_with_workers(shard_dirs):
    values = stream_values(ShardedStream(shard_dirs[1], lanes=2, window=4, seed=3), 1, num_workers=2)
    assert ([x["id"] for x in values[:16]], digest(values)) == JSONL


def test_stream_packing(shard_dirs):
    stream = ShardedStream(shard_dirs[1], lanes=2, window=3, seed=8, pack_to=8, tokens="tokens")
    values = stream_values(stream, 0)
    assert (json.loads(json.dumps(values[:3], default=lambda t: t.tolist())), digest(values)) == PACKED
