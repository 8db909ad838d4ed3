"""Hugging Face datasets, resumed exactly: run it twice. The first run writes a dataset with save_to_disk (three
Arrow files, nothing downloaded) and reads two batches from each loader before it is "preempted"; the second, a
fresh process, resumes both from their checkpoint files with two workers and prints the rest of the epoch, then
the uninterrupted epoch for comparison."""

import os
import sys

import datasets
import torch

from torch_input_ckpt import InputCheckpointer, ResumableDataLoader, stream_hf_dataset

root = sys.argv[1] if len(sys.argv) > 1 else "."
data = os.path.join(root, "data")
if not os.path.isdir(data):  # the first run writes the dataset: 21 rows in 3 Arrow files
    rows = {"id": [f"{source}-{k}" for source in ("web", "code", "math") for k in range(7)]}
    rows["tokens"] = [[k, k + 1, k + 2][: 1 + k % 3] for k in range(21)]
    datasets.Dataset.from_dict(rows).save_to_disk(data, num_shards=3)
ds = datasets.load_from_disk(data)


# --8<-- [start:map]
def augment(batch):
    """A transform that draws: the loader seeds torch's RNG per sample, so the draws resume too."""
    return {"id": batch["id"], "noise": torch.rand(len(batch["id"])).tolist()}


def map_loader(num_workers=0):
    # The Dataset itself as a map-style dataset: the loader shuffles it and checkpoints its position.
    dataset = ds.with_transform(augment)
    pairs = lambda b: [(r["id"], r["noise"]) for r in b]  # noqa: E731
    return ResumableDataLoader(dataset, batch_size=4, shuffle=True, seed=0, num_workers=num_workers, collate_fn=pairs)


# --8<-- [end:map]


# --8<-- [start:stream]
def stream_loader(num_workers=0):
    # Its Arrow files as a stream, shuffled within windows of 8 rows: the exact, resumable replacement for
    # ds.to_iterable_dataset().shuffle(buffer_size=8). Counts come from the files' metadata.
    stream = stream_hf_dataset(ds, window=8, seed=0)
    return ResumableDataLoader(stream, batch_size=4, num_workers=num_workers, collate_fn=lambda b: [r["id"] for r in b])


# --8<-- [end:stream]


for name, make in (("map", map_loader), ("stream", stream_loader)):
    directory = os.path.join(root, "ckpt", name)
    if not os.path.isdir(directory):  # the first run: two batches, then "preempted"
        loader = make()
        with InputCheckpointer(directory, loader, every_n_steps=1) as ckpt:
            it = iter(loader)
            for step in (1, 2):
                print(name, next(it))
                ckpt.after_step(step)
    else:  # the second run, a fresh process, with two workers: the same batches and draws
        resumed = make(num_workers=2)
        with InputCheckpointer(directory, resumed, every_n_steps=1) as ckpt:
            ckpt.restore()
            print(name, list(resumed))
        print(name, list(make()))  # the uninterrupted epoch 0, for comparison
