"""The "Mixtures" quick start (docs/guides/mixtures.md): run it twice. The first run is preempted after two
batches; the second, a fresh process, resumes from the checkpoint file with the same weights, then with new ones."""

import sys

from torch_input_ckpt import InputCheckpointer, Mixture, ResumableDataLoader


class Tagged:  # any map-style dataset
    def __init__(self, name, n):
        self.name, self.n = name, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return f"{self.name}{i}"


sources = {"web": Tagged("web", 70), "code": Tagged("code", 20), "math": Tagged("math", 5)}


def make_loader(weights):
    mix = Mixture(sources, weights)  # 95 samples an epoch
    return mix, ResumableDataLoader(mix, batch_size=8, shuffle=True, seed=0, collate_fn=list)


directory = sys.argv[1] if len(sys.argv) > 1 else "ckpt"
mix, loader = make_loader({"web": 7, "code": 2, "math": 1})
print(mix.counts())  # {'web': 67, 'code': 19, 'math': 9}: exact, by largest remainder
with InputCheckpointer(directory, loader, every_n_steps=1) as ckpt:
    if ckpt.restore_or_save_initial() is None:  # the first run: two batches, then "preempted"
        it = iter(loader)
        for step in (1, 2):
            print(next(it))
            ckpt.after_step(step)  # the state after `step`: a few integers per source, in a JSON file
        sys.exit()
    rest = [s for batch in loader for s in batch]  # the second run, a fresh process: the rest of epoch 0
print(rest)  # the uninterrupted epoch's samples 16..94
print([s for batch in make_loader({"web": 7, "code": 2, "math": 1})[1] for s in batch])  # for comparison

# New weights, from the same checkpoint file: they apply from the resume point; each source continues from its
# own cursor.
mix2, resumed = make_loader({"web": 5, "code": 3, "math": 2})
with InputCheckpointer(directory, resumed, every_n_steps=1) as ckpt:
    ckpt.restore(2)
    rest = [s for batch in resumed for s in batch]  # the other 79 samples of epoch 0
print(rest)
print(len(rest), mix2.counts())  # 79 {'web': 48, 'code': 28, 'math': 19} in each later epoch
