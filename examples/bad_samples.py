"""The "Bad samples" example (docs/guides/steering-bad-samples.md): a dataset with three corrupt records, read
with on_error="skip". Run it with --stop-after N to be "preempted" after step N; run it again (a fresh process,
any --workers) and it resumes from the checkpoint file: the same batches as a run that was never stopped, each
bad record logged once, none of them read again in epoch 1."""

import argparse
import json
import logging

from torch.utils.data import Dataset

from torch_input_ckpt import InputCheckpointer, ResumableDataLoader


class Records(Dataset):
    """23 records; 4, 9 and 17 are corrupt: reading them raises."""

    def __len__(self):
        return 23

    def __getitem__(self, index):
        if index in (4, 9, 17):
            raise ValueError(f"record {index}: unexpected end of data")
        return index


parser = argparse.ArgumentParser()
parser.add_argument("directory")
parser.add_argument("--stop-after", type=int, default=None)
parser.add_argument("--workers", type=int, default=0)
args = parser.parse_args()
# The library logs each skipped sample once, as a warning on the "torch_input_ckpt" logger.
logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
log = logging.getLogger("train")

loader = ResumableDataLoader(
    Records(), batch_size=4, shuffle=True, seed=7, num_workers=args.workers, on_error="skip", max_errors=5
)
with InputCheckpointer(args.directory, loader, every_n_steps=1) as ckpt:
    step = ckpt.restore_or_save_initial() or 0
    while loader.epoch < 2:
        epoch = loader.epoch
        for batch in loader:  # a batch that held a bad record is shorter
            step += 1
            print(json.dumps({"step": step, "epoch": epoch, "batch": batch.tolist()}))
            ckpt.after_step(step)  # the bad records of this batch are in the state from here on
            if step % 3 == 0:
                stats = loader.stats()  # since the last call: for your own logger
                log.info(
                    "input wait %.1f%% of %d steps, %d bad", 100 * stats.wait_fraction, stats.batches, stats.bad_samples
                )
            if step == args.stop_after:
                raise SystemExit(0)  # "preempted"
print(json.dumps({"bad_samples": loader.bad_samples}))  # [(epoch, index, error), ...], the resumed ones included
