"""A weight schedule (docs/guides/steering.md): more code after 40 samples, an anneal on math and books after 150.
Run it twice: the first run is preempted at step 4 (sample 40, exactly at a change); the second, a fresh process,
resumes from the checkpoint file and goes on across the next change."""

import sys
from collections import Counter

from torch_input_ckpt import InputCheckpointer, Mixture, ResumableDataLoader


class Tagged:  # any map-style dataset
    def __init__(self, name, n):
        self.name, self.n = name, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return f"{self.name}{i}"


sources = {
    "web": Tagged("web", 60),
    "code": Tagged("code", 24),
    "math": Tagged("math", 12),
    "books": Tagged("books", 4),
}
schedule = [  # (from this global sample of the run on, these weights)
    (0, {"web": 6, "code": 2, "math": 1, "books": 1}),
    (40, {"web": 3, "code": 5, "math": 1, "books": 1}),  # more code
    (150, {"web": 1, "code": 1, "math": 4, "books": 4}),  # the anneal: math and books
]


def make_loader():
    # 100 samples an epoch; with_origin: each item comes with its source's name, for a per-source loss
    mix = Mixture(sources, schedule=schedule, with_origin=True)
    return mix, ResumableDataLoader(mix, batch_size=10, shuffle=True, seed=0)


if __name__ == "__main__":
    directory = sys.argv[1] if len(sys.argv) > 1 else "ckpt"
    mix, loader = make_loader()
    print(mix.pieces(0))  # [(0, 40, {'web': 24, 'code': 8, ...}), (40, 100, {...})]: exact counts per piece
    print(mix.pieces(1))  # [(0, 50, {...}), (50, 100, {...})]: the anneal starts at sample 150
    batches = (batch for epoch in range(3) for batch in loader)
    with InputCheckpointer(directory, loader, every_n_steps=1) as ckpt:
        first = ckpt.restore_or_save_initial()
        for step in range(1 if first is None else first + 1, 31):
            batch = next(batches)  # Sourced(item=[...], source=[...]), collated by the default collate
            print(step, " ".join(batch.item), dict(Counter(batch.source)))  # your per-source loss goes here
            ckpt.after_step(step)
            if first is None and step == 4:
                sys.exit()  # the first run is "preempted" at sample 40, where the weights change
