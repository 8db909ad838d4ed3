"""Out-of-range integers inside a mixture's saved counters: the file is damaged when it is read, so that
restore falls back to the older checkpoint (with a warning naming the entry) and ``inspect`` reports it,
instead of both accepting it and the first batch crashing ("Overflow when unpacking long long")."""

from __future__ import annotations

import json
import re

import pytest

from torch_input_ckpt import InputCheckpointer, InputCheckpointWarning
from torch_input_ckpt.__main__ import main
from torch_input_ckpt.store import files
from torch_input_ckpt.store.files import InputFile

from tests.support.mixture_data import loader


def saved_run(directory):
    """A mixture loader saved after batches 1 and 2; the batches that follow each save."""
    first = loader()
    stream = iter(first)
    with InputCheckpointer(directory, first) as ckpt:
        next(stream)
        ckpt.save(1)
        after_1 = next(stream)["id"].tolist()
        ckpt.save(2)
    return after_1


def damage(directory, step, edit):
    """Rewrite the file of ``step`` with ``edit(dataset_order)`` applied, signed as the library signs files."""
    path = directory / InputFile(0, step).name
    states = files.read_checkpoint(path).states
    edit(states["input"]["sampler"]["dataset_order"])
    path.write_bytes(files.encode_checkpoint(rank=0, world_size=None, step=step, states=states, external=[]))


def source_entry(key, value):
    return lambda order: order["sources"][sorted(order["sources"])[-1]].update({key: value})


CASES = {
    "base 2**63": (source_entry("base", 2**63), r"\['base'\]=9223372036854775808 is invalid"),
    "source_epoch 2**64": (source_entry("source_epoch", 2**64), r"\['source_epoch'\]=18446744073709551616"),
    "epoch_start 2**63": (source_entry("epoch_start", 2**63), r"\['epoch_start'\]=9223372036854775808"),
    "anchor_epoch 2**62": (lambda o: o.update(anchor_epoch=2**62), "cannot be evaluated at the saved position"),
    "epoch_length 2**62": (source_entry("epoch_length", 2**62), "expected epoch_length <= length"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_out_of_range_mixture_counters_fall_back_and_inspect_reports_them(tmp_path, case, capsys):
    edit, reason = CASES[case]
    after_1 = saved_run(tmp_path)
    damage(tmp_path, 2, edit)
    with pytest.raises(Exception, match=reason):
        files.read_checkpoint(tmp_path / InputFile(0, 2).name)
    fresh = loader()
    with InputCheckpointer(tmp_path, fresh) as ckpt, pytest.warns(InputCheckpointWarning, match=reason):
        assert ckpt.restore() == 1
    assert next(iter(fresh))["id"].tolist() == after_1, "the batch after step 1, as the run delivered it"
    assert main(["inspect", str(tmp_path), "--json"]) == 0  # the rank still has a valid checkpoint (step 1)
    report = json.loads(capsys.readouterr().out)
    by_step = {f["step"]: f for f in report["ranks"][0]["files"]}
    assert by_step[1]["valid"] and not by_step[2]["valid"]
    assert re.search(reason, by_step[2]["problem"])
