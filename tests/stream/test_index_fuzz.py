"""Hypothesis fuzz of index files (issue 22): random bytes, truncations, byte mutations, and value mutations of
a valid index, re-signed so that they reach the value checks. The only allowed outcomes: a read that lists
exactly the entries of the file, or an InputStateError/ValueError naming the index (or a shard of the
directory) -- never another exception type, and never a hang."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torch_input_ckpt import ShardedStream
from torch_input_ckpt.stream.shards import write_index

from tests.support.stream_data import write_shards

INDEX = "torch_input_ckpt_index.json"
# make test: 100 examples from a fixed seed; make fuzz: HYPOTHESIS_FUZZ_EXAMPLES of them, from fresh seeds.
FUZZ_EXAMPLES = os.environ.get("HYPOTHESIS_FUZZ_EXAMPLES")
FUZZ = settings(
    max_examples=int(FUZZ_EXAMPLES) if FUZZ_EXAMPLES else 100,
    derandomize=not FUZZ_EXAMPLES,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
pytestmark = pytest.mark.fuzz


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    root = write_shards(tmp_path_factory.mktemp("fuzz") / "shards", "jsonl", (3, 0, 4))
    write_index(root, "tokens")
    return root, (root / INDEX).read_bytes()


def check_outcome(root, data: bytes) -> None:
    (root / INDEX).write_bytes(data)
    try:
        stream = ShardedStream(root, pack_to=4, tokens="tokens")
    except ValueError as error:  # InputStateError is one
        assert str(root) in str(error), f"the error names neither the index nor a shard: {error}"
        return
    listed = json.loads(data)["shards"]
    assert [(s.source.rsplit("/", 1)[-1], s.count, s.tokens) for s in stream.shards] == [
        (e["name"], e["count"], e["tokens"]) for e in listed
    ]


@FUZZ
@given(st.binary(max_size=3000))
def test_random_bytes(valid, data):
    check_outcome(valid[0], data)


@FUZZ
@given(st.data())
def test_truncations_and_byte_mutations(valid, draw):
    root, good = valid
    data = bytearray(good[: draw.draw(st.integers(0, len(good)), label="cut")])
    for _ in range(draw.draw(st.integers(0, 4), label="mutations")):
        if data:
            data[draw.draw(st.integers(0, len(data) - 1))] = draw.draw(st.integers(0, 255))
    check_outcome(root, bytes(data))


SPECIAL = [0, -1, -50, 2**48, 2**48 + 1, 2**63, -(2**63) - 1, 10**30, 10**99, 1.5, True, "12", ""]
NAMES = ["shard-000.jsonl", "shard-002.jsonl", "x\x00.jsonl", "../shard-000.jsonl", "a" * 300 + ".npy", "passwd"]
json_values = st.one_of(
    st.sampled_from(SPECIAL + NAMES),
    st.recursive(
        st.none() | st.booleans() | st.integers(-(10**40), 10**40) | st.floats() | st.text(max_size=20),
        lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
        max_leaves=8,
    ),
)


def _signed(body) -> bytes:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    return json.dumps({**body, "sha256": hashlib.sha256(canonical).hexdigest()}).encode()


@FUZZ
@given(st.data())
def test_value_mutations_reach_the_value_checks(valid, draw):
    root, good = valid
    body = json.loads(good)
    body.pop("sha256", None)
    for _ in range(draw.draw(st.integers(1, 3), label="changes")):
        entries = body["shards"] if isinstance(body.get("shards"), list) else []
        targets = [body] + [e for e in entries if isinstance(e, dict)]
        top = len(targets) == 1 or draw.draw(st.integers(0, 4), label="top") == 0  # mostly an entry's value
        target = body if top else draw.draw(st.sampled_from(targets[1:]), label="where")
        key = draw.draw(st.sampled_from([*target, "extra"]), label="key")
        action = draw.draw(st.sampled_from(["set", "delete", "duplicate"]), label="action")
        if action == "set":
            target[key] = draw.draw(json_values, label="value")
        elif action == "delete":
            target.pop(key, None)
        elif len(targets) > 1:
            entries.append(dict(draw.draw(st.sampled_from(targets[1:]), label="duplicated")))
    check_outcome(root, _signed(body))
