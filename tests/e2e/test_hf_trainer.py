"""ResumableTrainer: a real transformers Trainer, SIGKILLed mid-epoch and resumed, equals an uninterrupted run.

The runs are tests/support/hf_trainer_child.py in subprocesses (alone, and under torchrun with gloo on
127.0.0.1); each logs every optimizer step's sample ids and augmentation draws per rank.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from torch_input_ckpt import InputStateError, UnsupportedVersionError

from tests.support import hf_trainer_child
from tests.support.forked import ForkServer
from tests.support.hf_trainer_child import child_env, paired_checkpoints, read_log, start, wait


def _ids(line: dict[str, Any]) -> list[int]:
    return [sample for sample, _ in line["seen"]]


# -- one process, two workers, gradient accumulation, two epochs, save_total_limit ------------------

SINGLE = ["--epochs", "2", "--accumulation", "2", "--workers", "2", "--save-steps", "3", "--limit", "2"]
SINGLE += ["--length", "30"]  # 15 batches of 2 per epoch: 8 optimizer steps, the last of one batch


@pytest.mark.slow
def test_sigkilled_trainer_resumes_every_step_exactly(tmp_path: Path, hf_forkserver: ForkServer) -> None:
    out, log = tmp_path / "out", tmp_path / "log"
    # Forked from a server that imported transformers (no interpreter start); the resume below is a fresh one.
    killed = start(out, log, [*SINGLE, "--kill-at", "11"], server=hf_forkserver)
    hf_trainer_child.run([str(tmp_path / "ref"), str(tmp_path / "ref.log"), *SINGLE])  # uninterrupted, here
    reference = {line["step"]: line for line in read_log(tmp_path / "ref.log")}
    assert sorted(reference) == list(range(1, 17))

    code, output = wait(killed)
    assert code == -signal.SIGKILL, output[-3000:]
    before = read_log(log)
    assert [line["step"] for line in before] == list(range(1, 12))
    # save_total_limit=2 kept two model checkpoints, and the input checkpoint of each inside it.
    assert paired_checkpoints(out) == {6: ["input_0-00000006.json"], 9: ["input_0-00000009.json"]}

    code, output = wait(start(out, log, [*SINGLE, "--resume"]))
    assert code == 0, output[-3000:]
    resumed = read_log(log)[len(before) :]
    assert [line["step"] for line in resumed] == list(range(10, 17)), "resumed after checkpoint-9"
    for line in resumed:  # same samples, same order, same augmentation draws, same Trainer epoch
        assert line["seen"] == reference[line["step"]]["seen"], line["step"]
        assert line["epoch"] == pytest.approx(reference[line["step"]]["epoch"])
    # The trained stream (steps 1..9 before the kill, 10..16 after) has each sample once per epoch.
    stream = [line for line in before if line["step"] <= 9] + resumed
    for epoch, steps in ((0, range(1, 9)), (1, range(9, 17))):
        ids = [i for line in stream if line["step"] in steps for i in _ids(line)]
        assert sorted(ids) == list(range(30)), f"epoch {epoch}: missing or duplicated samples"
    # Saved at 12, 15 and at the end (16); the limit pruned 6, 9 and 12 with their input checkpoints.
    assert paired_checkpoints(out) == {15: ["input_0-00000015.json"], 16: ["input_0-00000016.json"]}


# -- torchrun: 2 ranks killed mid-epoch, resumed on 2 and on 3 --------------------------------------

# 31 samples per rank on 2 ranks: 16 batches of 2 (the last of 1), so max_steps 16 is one epoch there.
DDP = ["--max-steps", "16", "--workers", "2", "--save-steps", "3", "--length", "62"]
EPOCHS_3 = ["--max-steps", "-1", "--epochs", "2"]


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("hf_ddp")
    runs = {"killed": start(base / "out2", base / "log2", [*DDP, "--kill-at", "7"], ranks=2)}
    # Without workers: the order does not depend on them (and the reference costs less).
    runs["reference"] = start(base / "ref", base / "ref.log", [*DDP, "--workers", "0"], ranks=2)
    finished = {name: wait(proc) for name, proc in runs.items()}
    assert finished["killed"][0] != 0, finished["killed"][1][-3000:]
    assert finished["reference"][0] == 0, finished["reference"][1][-3000:]
    killed_lines = read_log(base / "log2")
    assert paired_checkpoints(base / "out2") == {
        step: [f"input_0-{step:08d}.json", f"input_1-{step:08d}.json"] for step in (3, 6)
    }
    shutil.copytree(base / "out2", base / "out3")
    shutil.copy(base / "log2", base / "log3")
    resumes = {2: start(base / "out2", base / "log2", [*DDP, "--resume"], ranks=2)}
    # On 3 ranks, by epochs: the Trainer's own count (2 epochs x 11 steps) would stop 2 steps early.
    resumes[3] = start(base / "out3", base / "log3", [*DDP, "--resume", "--workers", "0", *EPOCHS_3], ranks=3)
    finished = {n: wait(proc) for n, proc in resumes.items()}  # both reaped before any assertion
    for n, (code, output) in finished.items():
        assert code == 0, f"resume on {n} ranks:\n{output[-3000:]}"
    return {
        "dir": base,
        "before": [line for line in killed_lines if line["step"] <= 6],
        "reference": read_log(base / "ref.log"),
        2: read_log(base / "log2")[len(killed_lines) :],
        3: read_log(base / "log3")[len(killed_lines) :],
    }


@pytest.mark.slow
def test_torchrun_resumed_on_two_ranks_equals_uninterrupted(ddp_runs: dict[str, Any]) -> None:
    reference = {(line["rank"], line["step"]): line for line in ddp_runs["reference"]}
    assert len(reference) == 2 * 16
    resumed = {(line["rank"], line["step"]): line for line in ddp_runs[2]}
    assert sorted(resumed) == [(rank, step) for rank in (0, 1) for step in range(7, 17)]
    for key, line in resumed.items():
        assert line["seen"] == reference[key]["seen"], key
        assert line["epoch"] == pytest.approx(reference[key]["epoch"])


@pytest.mark.slow
def test_torchrun_resumed_on_three_ranks_trains_the_epoch_exactly_once(ddp_runs: dict[str, Any]) -> None:
    before, after = ddp_runs["before"], ddp_runs[3]
    # 24 samples in steps 1..6 on 2 ranks; 38 left, 13 per rank on 3 (one padded): steps 7..13 end
    # epoch 0; epoch 1 on 3 ranks is 21 per rank (one padded), 11 steps: 14..24.
    assert sorted({(line["rank"], line["step"]) for line in after}) == [
        (rank, step) for rank in range(3) for step in range(7, 25)
    ]
    assert all(line["world"] == 3 for line in after)
    first = [line for line in ddp_runs["reference"] if (line["rank"], line["step"]) == (0, 1)][0]
    _check_epoch_once(before + [line for line in after if line["step"] <= 13], padded=[_ids(first)[0]])
    epoch1 = [line for line in after if line["step"] > 13]
    first1 = [line for line in epoch1 if (line["rank"], line["step"]) == (0, 14)][0]
    _check_epoch_once(epoch1, padded=[_ids(first1)[0]])
    for step, epoch in ((13, 1.0), (24, 2.0)):  # the Trainer's epoch accounting ends each epoch on time
        at = [line for line in after if line["step"] == step]
        assert len(at) == 3 and all(line["epoch"] == pytest.approx(epoch) for line in at)
    assert all(1.0 < line["epoch"] < 2.0 for line in epoch1 if line["step"] < 24)


def _check_epoch_once(lines: list[dict[str, Any]], padded: list[int]) -> None:
    """Every sample of the 62 trained once: none missing, and only ``padded`` (the epoch's first) twice."""
    counts = Counter(i for line in lines for i in _ids(line))
    assert sorted(counts) == list(range(62)), "missing samples"
    assert sorted(i for i, n in counts.items() if n > 1) == sorted(padded), "duplicated samples"
    assert all(counts[i] == 2 for i in padded)


@pytest.mark.slow
def test_torchrun_checkpoint_resumed_in_one_process(ddp_runs: dict[str, Any], tmp_path: Path) -> None:
    shutil.copytree(ddp_runs["dir"] / "ref", tmp_path / "out")
    for name in [p.name for p in (tmp_path / "out").glob("checkpoint-*") if p.name != "checkpoint-6"]:
        shutil.rmtree(tmp_path / "out" / name)  # resume from step 6 of the uninterrupted 2-rank run
    flags = ["--epochs", "1", "--workers", "2", "--save-steps", "100", "--length", "62", "--resume"]
    # Accumulation of 5: 12 batches of the epoch are behind this rank, not a whole number of steps.
    with pytest.raises(InputStateError, match="12 batches into epoch 0 .* gradient accumulations of 5"):
        hf_trainer_child.run([str(tmp_path / "out"), str(tmp_path / "bad.log"), *flags, "--accumulation", "5"])
    hf_trainer_child.run([str(tmp_path / "out"), str(tmp_path / "log"), *flags])
    after = read_log(tmp_path / "log")
    # 38 samples left on 1 rank: 19 batches, steps 7..25.
    assert [line["step"] for line in after] == list(range(7, 26))
    before = [line for line in ddp_runs["reference"] if line["step"] <= 6]
    _check_epoch_once(before + after, padded=[])
    assert after[-1]["epoch"] == pytest.approx(1.0)


# -- what is refused -----------------------------------------------------------------------------


def _trainer(
    tmp_path: Path, dataset: Any = None, cls: type | None = None, callbacks: list[Any] | None = None, **kwargs: Any
) -> Any:
    from transformers import TrainingArguments  # noqa: PLC0415 - heavy; only these tests need it

    from torch_input_ckpt.hf import ResumableTrainer  # noqa: PLC0415

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", **kwargs)
    model = hf_trainer_child.TinyModel(hf_trainer_child.TinyConfig())
    train = hf_trainer_child.Samples(8) if dataset is None else dataset
    return (cls or ResumableTrainer)(model=model, args=args, train_dataset=train, callbacks=callbacks)


def test_refuses_what_it_cannot_seek(tmp_path: Path) -> None:
    import torch  # noqa: PLC0415

    from torch_input_ckpt.hf import ResumableTrainer  # noqa: PLC0415

    with pytest.raises(ValueError, match="train_sampling_strategy='group_by_length'"):
        _trainer(tmp_path, train_sampling_strategy="group_by_length").get_train_dataloader()

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):  # noqa: ANN204
            return iter(range(4))

    with pytest.raises(ValueError, match="map-style dataset with a length .got Stream"):
        _trainer(tmp_path, dataset=Stream(), max_steps=2).get_train_dataloader()

    class OwnSampler(ResumableTrainer):
        def _get_train_sampler(self, train_dataset=None):  # noqa: ANN001, ANN202
            return None

    with pytest.raises(ValueError, match="OwnSampler overrides _get_train_sampler"):
        _trainer(tmp_path, cls=OwnSampler).get_train_dataloader()
    with pytest.raises(ValueError, match="auto_find_batch_size"):
        _trainer(tmp_path, auto_find_batch_size=True).get_train_dataloader()


def test_a_checkpoint_without_input_checkpoint_is_an_error(tmp_path: Path) -> None:
    from transformers import Trainer  # noqa: PLC0415

    _trainer(tmp_path / "stock", cls=Trainer, max_steps=2, save_steps=2).train()
    trainer = _trainer(tmp_path / "ours", max_steps=4, save_steps=2)
    with pytest.raises(InputStateError, match="checkpoint-2 has no input checkpoint .* not written by a"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "stock" / "checkpoint-2"))


def test_the_core_never_imports_hugging_face() -> None:
    code = "import sys, torch_input_ckpt; print(sorted({'transformers', 'accelerate'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_damaged_trainer_state_is_skipped_for_the_checkpoint_before_it(tmp_path: Path) -> None:
    from torch_input_ckpt.hf import IncompleteCheckpointWarning  # noqa: PLC0415

    out = tmp_path / "out"
    _trainer(out, max_steps=6, save_steps=2).train()
    state = out / "checkpoint-6" / "trainer_state.json"
    state.write_text('{"global_step": 6, "log_hi')  # cut short while written
    (out / "checkpoint-4" / "trainer_state.json").write_text('{"global_step": 3}')  # another step's
    with pytest.raises(ValueError, match="Can't find a valid checkpoint at .*checkpoint-8"):  # the Trainer's own
        _trainer(out, max_steps=6, save_steps=2).train(resume_from_checkpoint=str(out / "checkpoint-8"))
    log = tmp_path / "log"
    trainer = _trainer(out, max_steps=6, save_steps=2, callbacks=[hf_trainer_child.Log(str(log), None)])
    with pytest.warns(IncompleteCheckpointWarning) as caught:
        trainer.train(resume_from_checkpoint=True)
    assert [str(w.message) for w in caught] == [
        f"{out / 'checkpoint-6'} is incomplete: its trainer_state.json cannot be read (JSONDecodeError: "
        "Unterminated string starting at: line 1 column 20 (char 19)) (the Trainer writes it last: a save was "
        f"interrupted); so is {out / 'checkpoint-4'}: its trainer_state.json has global_step 3, not 4; resuming "
        f"from {out / 'checkpoint-2'}, the newest complete checkpoint before it. Delete the incomplete folders to "
        "resume without this warning"
    ]
    assert [line["step"] for line in read_log(log)] == [3, 4, 5, 6]


def test_a_trainer_writing_its_state_before_the_model_is_an_unsupported_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import transformers.trainer  # noqa: PLC0415
    from transformers import Trainer  # noqa: PLC0415

    from torch_input_ckpt._compat import hf as compat_hf  # noqa: PLC0415

    class StateFirst(Trainer):  # what the incomplete-folder check must not be fooled by
        def _save_checkpoint(self, model, trial):  # noqa: ANN001, ANN202
            self.state.save_to_json("trainer_state.json")
            self.save_model("out", _internal_call=True)
            self._save_optimizer_and_scheduler("out")
            self._save_rng_state("out")

    monkeypatch.setattr(compat_hf, "_hf_checked", set())  # checked once per process: check again
    with pytest.raises(UnsupportedVersionError, match="writing trainer_state.json after the model"):
        compat_hf.hf_check_trainer(transformers.trainer, StateFirst, "9.9.9")
    compat_hf.hf_check_trainer(transformers.trainer, Trainer, "5.23.0")
