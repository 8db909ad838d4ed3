"""The shard cache example (docs/guides/shard-cache.md): shards on a shared file system (a network mount, say) read
through a node-local cache two thirds their size. Run it twice: the first run is preempted after two batches; the
second, a fresh process with 2 workers, resumes from the checkpoint file and reads through the same cache."""

import json
import os
import sys

from torch_input_ckpt import InputCheckpointer, ResumableDataLoader, Shard, ShardedStream

root = sys.argv[1] if len(sys.argv) > 1 else "."
shared, cache_dir, directory = (os.path.join(root, d) for d in ("shared-fs", "local-cache", "ckpt"))
counts = {"web": 6, "code": 4, "math": 7, "books": 5, "news": 3, "wiki": 6, "law": 4, "chat": 5}
if not os.path.isdir(shared):  # the first run writes the data
    os.makedirs(shared)
    for name, n in counts.items():
        with open(os.path.join(shared, f"{name}.jsonl"), "w") as f:
            f.writelines(json.dumps({"id": f"{name}-{k}"}) + "\n" for k in range(n))
shards = [Shard(os.path.join(shared, f"{name}.jsonl"), n) for name, n in counts.items()]
limit = sum(os.path.getsize(shard.source) for shard in shards) * 2 // 3


def ids(batch):
    return [sample["id"] for sample in batch]


def make_loader(num_workers=0):
    # Every rank and worker of the node shares cache_dir: a shard is downloaded (here: copied) once while it
    # is needed, read ahead in the stream's order, and evicted by next use when the cache is full.
    stream = ShardedStream(shards, lanes=2, seed=0, window=4, cache_dir=cache_dir, cache_limit=limit)
    return ResumableDataLoader(stream, batch_size=3, num_workers=num_workers, collate_fn=ids)


if not os.path.isdir(directory):  # the first run: two batches, then "preempted"
    loader = make_loader()
    with InputCheckpointer(directory, loader, every_n_steps=1) as ckpt:
        it = iter(loader)
        for step in (1, 2):
            print(next(it))
            ckpt.after_step(step)
else:  # the second run, a fresh process with 2 workers, the same cache: the same stream
    resumed = make_loader(num_workers=2)
    with InputCheckpointer(directory, resumed, every_n_steps=1) as ckpt:
        ckpt.restore()
        print(list(resumed))  # the rest of epoch 0
    print(list(make_loader()))  # the uninterrupted epoch 0, for comparison
