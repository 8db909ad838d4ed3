"""The "Data on object storage" example (docs/guides/object-storage.md): run it twice with a bucket URL and a
local folder. The first run uploads four .npy token shards to the bucket, indexes them where they are, and is
preempted after two batches; the second, a fresh process, resumes from the checkpoint file with two workers and
downloads only the shards it still reads. The endpoint and credentials come from the standard AWS_* environment
(AWS_ENDPOINT_URL for an S3-compatible store), or pass storage_options={...} to ShardedStream."""

import os
import subprocess
import sys

import numpy as np

from torch_input_ckpt import InputCheckpointer, ResumableDataLoader, ShardedStream
from torch_input_ckpt.remote import ObjectStore

bucket_url, root = sys.argv[1].rstrip("/"), sys.argv[2]
data = f"{bucket_url}/tokens/"  # the shards, and the index beside them
directory, cache = os.path.join(root, "ckpt"), os.path.join(root, "cache")  # the resumed run's (cold) cache

if not os.path.isdir(directory):  # the first run uploads and indexes the data
    store = ObjectStore.for_url(data)
    for shard, (name, rows) in enumerate({"web": 6, "code": 2, "math": 5, "books": 3}.items()):
        tokens = np.arange(rows * 4, dtype=np.int32).reshape(rows, 4) + 1000 * shard  # 4 tokens a row
        path = os.path.join(root, f"{name}.npy")
        np.save(path, tokens)
        with open(path, "rb") as f:
            store.put(f"{data}{name}.npy", f.read())
    # Counts come from the .npy headers, by range reads: no shard is downloaded to index it.
    subprocess.run([sys.executable, "-m", "torch_input_ckpt", "index", data], check=True)


def first_tokens(batch):
    return [int(row[0]) for row in batch]


def make_loader(num_workers=0, cache_dir=cache):
    stream = ShardedStream(data, lanes=2, seed=0, window=2, cache_dir=cache_dir)
    return ResumableDataLoader(stream, batch_size=2, num_workers=num_workers, collate_fn=first_tokens)


if not os.path.isdir(directory):  # the first run: two batches, then "preempted"
    loader = make_loader(cache_dir=None)  # a temporary folder, removed at exit
    with InputCheckpointer(directory, loader, every_n_steps=1) as ckpt:
        it = iter(loader)
        for step in (1, 2):
            print(next(it))
            ckpt.after_step(step)
else:  # the second run, a fresh process with an empty cache and two workers: the same stream
    resumed = make_loader(num_workers=2)
    with InputCheckpointer(directory, resumed, every_n_steps=1) as ckpt:
        ckpt.restore()  # the newest checkpoint: step 2
        print(list(resumed))  # the rest of epoch 0
    downloaded = os.listdir(os.path.join(cache, "objects"))  # the cache's copies: "<hash of the URL>-web.npy"
    print(sorted(name.split("-", 1)[1].split(".")[0] for name in downloaded))
    print(list(make_loader(cache_dir=None)))  # the uninterrupted epoch 0, for comparison
