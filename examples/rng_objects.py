"""An RNG object in a map-style dataset, built per sample from the seed the loader set: its draws follow the sample
across worker counts and resumes. Run it twice: the first run (2 workers) is preempted after two batches; the
second, a fresh process with no workers, resumes from the checkpoint file and draws the same numbers."""

import os
import sys

import numpy as np
import torch

from torch_input_ckpt import InputCheckpointer, ResumableDataLoader


class Noisy(torch.utils.data.Dataset):
    def __len__(self):
        return 24

    def __getitem__(self, i):
        rng = np.random.default_rng(torch.initial_seed())  # seeded from (loader seed, epoch, position)
        return [i, round(float(rng.normal()), 6)]


def make_loader(num_workers):
    # torch's RNG is declared: the sample only reads its seed, which the loader's check cannot see as a draw.
    return ResumableDataLoader(
        Noisy(), batch_size=4, shuffle=True, seed=0, num_workers=num_workers, collate_fn=list, reseed_rng=("torch",)
    )


directory = sys.argv[1] if len(sys.argv) > 1 else "ckpt"
if not os.path.isdir(directory):  # the first run: two batches, then "preempted"
    loader = make_loader(num_workers=2)
    with InputCheckpointer(directory, loader, every_n_steps=1) as ckpt:
        it = iter(loader)
        for step in (1, 2):
            print(next(it))
            ckpt.after_step(step)
else:  # a fresh process, no workers: the same samples and the same draws
    resumed = make_loader(num_workers=0)
    with InputCheckpointer(directory, resumed, every_n_steps=1) as ckpt:
        ckpt.restore()
        print(list(resumed))  # the rest of epoch 0
    print(list(make_loader(num_workers=0)))  # the uninterrupted epoch 0, for comparison
