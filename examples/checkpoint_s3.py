"""Input checkpoints on object storage: the same checkpointer, given an s3:// URL. Each save is one object written
whole; one writer per rank is a lease object taken by a conditional write. Run it with a prefix and, to stop early,
a step: `python examples/checkpoint_s3.py s3://BUCKET/run-42/input 5`, then again without the step: it continues
after the newest input checkpoint (step 4) with the same samples and draws as an uninterrupted run."""

import os
import sys

import torch

from torch_input_ckpt import InputCheckpointer, ResumableDataLoader

url = sys.argv[1]
stop_at = int(sys.argv[2]) if len(sys.argv) > 2 else None
# s3fs's options: endpoint, credentials, region... (credentials here come from the usual AWS_* variables).
storage_options = {"endpoint_url": os.environ["AWS_ENDPOINT_URL"]} if "AWS_ENDPOINT_URL" in os.environ else None


class Noisy(torch.utils.data.Dataset):
    def __len__(self):
        return 22

    def __getitem__(self, i):  # a random augmentation per sample: the same draws after a resume
        return i + torch.rand(()).item()


loader = ResumableDataLoader(Noisy(), batch_size=4, shuffle=True, seed=0)
with InputCheckpointer(url, loader, every_n_steps=2, keep_last=2, storage_options=storage_options) as ckpt:
    step = ckpt.restore_or_save_initial() or 0  # the newest input checkpoint under the prefix, if any
    for epoch in range(loader.epoch, 2):
        for batch in loader:
            step += 1
            print(step, epoch, [round(x, 6) for x in batch.tolist()])
            ckpt.after_step(step)  # the upload runs on the background writer: the step does not wait for it
            if step == stop_at:
                sys.exit(0)  # leaving the with block flushes the pending uploads
