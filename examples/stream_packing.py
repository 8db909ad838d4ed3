"""Packed sequences from a sharded stream: run it twice. The first run writes and indexes the shards (token ids in a
field) and is preempted after two batches; the second, a fresh process, resumes from the checkpoint file with
another num_workers. Every token of every document is in exactly one packed sequence of the epoch."""

import json
import os
import subprocess
import sys

from torch_input_ckpt import InputCheckpointer, ResumableDataLoader, ShardedStream

root = sys.argv[1] if len(sys.argv) > 1 else "."
shards, directory = os.path.join(root, "shards"), os.path.join(root, "ckpt")
if not os.path.isdir(shards):  # the first run writes the data: documents of 1 to 11 tokens
    os.makedirs(shards)
    for s in range(3):
        with open(os.path.join(shards, f"part-{s}.jsonl"), "w") as f:
            for d in range(4 + s):
                doc = 10 * s + d  # token ids that say which document and which token they are
                f.write(json.dumps({"doc": doc, "tokens": [100 * doc + t for t in range((7 * doc) % 11 + 1)]}) + "\n")
    subprocess.run([sys.executable, "-m", "torch_input_ckpt", "index", shards, "--tokens", "tokens"], check=True)


def rows(batch):
    """A batch of packed sequences as lists: input_ids, position_ids, document_ids (-1 on padding)."""
    return [[s["input_ids"].tolist(), s["position_ids"].tolist(), s["document_ids"].tolist()] for s in batch]


def make_loader(num_workers=0):
    stream = ShardedStream(shards, lanes=2, seed=0, window=4, pack_to=8, tokens="tokens")
    return ResumableDataLoader(stream, batch_size=2, num_workers=num_workers, collate_fn=rows)


if not os.path.isdir(directory):  # the first run: two batches, then "preempted"
    loader = make_loader()
    print(len(loader.dataset), "packed sequences of 8 tokens an epoch")
    with InputCheckpointer(directory, loader, every_n_steps=1) as ckpt:
        it = iter(loader)
        for step in (1, 2):
            print(next(it))
            ckpt.after_step(step)  # the state after `step`: a cursor and the stream's configuration
else:  # the second run, a fresh process, with another num_workers: the same packed sequences
    resumed = make_loader(num_workers=2)
    with InputCheckpointer(directory, resumed, every_n_steps=1) as ckpt:
        ckpt.restore()  # the newest checkpoint: step 2
        print(list(resumed))  # the rest of epoch 0
    print(list(make_loader()))  # the uninterrupted epoch 0, for comparison
