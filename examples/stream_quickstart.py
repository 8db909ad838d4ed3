"""The "Sharded streams" quick start (docs/guides/streams.md): run it twice. The first run writes and indexes the
shards and is preempted after two batches; the second, a fresh process, resumes from the checkpoint file with
another num_workers."""

import json
import os
import subprocess
import sys

from torch_input_ckpt import InputCheckpointer, ResumableDataLoader, ShardedStream

root = sys.argv[1] if len(sys.argv) > 1 else "."
shards, directory = os.path.join(root, "shards"), os.path.join(root, "ckpt")
if not os.path.isdir(shards):  # the first run writes the data
    os.makedirs(shards)
    for s, n in enumerate([5, 0, 3, 8]):  # uneven shards, one of them empty
        with open(os.path.join(shards, f"part-{s}.jsonl"), "w") as f:
            for k in range(n):
                f.write(json.dumps({"id": f"{s}-{k}", "tokens": list(range(k + 1))}) + "\n")
    subprocess.run([sys.executable, "-m", "torch_input_ckpt", "index", shards, "--tokens", "tokens"], check=True)


def ids(batch):
    return [sample["id"] for sample in batch]


def make_loader(num_workers=0):
    stream = ShardedStream(shards, lanes=2, seed=0, window=4)
    return ResumableDataLoader(stream, batch_size=3, num_workers=num_workers, collate_fn=ids)


if not os.path.isdir(directory):  # the first run: two batches, then "preempted"
    loader = make_loader()
    with InputCheckpointer(directory, loader, every_n_steps=1) as ckpt:
        it = iter(loader)
        for step in (1, 2):
            print(next(it))
            ckpt.after_step(step)  # the state after `step`: a few integers, in a JSON file
else:  # the second run, a fresh process, with another num_workers: the same stream
    resumed = make_loader(num_workers=2)
    with InputCheckpointer(directory, resumed, every_n_steps=1) as ckpt:
        ckpt.restore()  # the newest checkpoint: step 2
        print(list(resumed))  # the rest of epoch 0
    print(list(make_loader()))  # the uninterrupted epoch 0, for comparison
