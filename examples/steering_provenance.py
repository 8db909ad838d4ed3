"""Steering a long run, seen from its checkpoints: which documents a step of a ShardedStream held (the loss-spike
recipe), and the report of a Mixture of streams whose weights changed on a resume (an anneal), with its plot.

Run: python examples/steering_provenance.py [WORKDIR]; it writes JSON-lines shards under WORKDIR/data, the
checkpoints under WORKDIR/stream and WORKDIR/mixture, and WORKDIR/mixture.png."""

import json
import sys
from pathlib import Path

from torch_input_ckpt import InputCheckpointer, Mixture, ResumableDataLoader, ShardedStream, samples_at
from torch_input_ckpt.__main__ import main
from torch_input_ckpt.stream.shards import write_index

work = Path(sys.argv[1] if len(sys.argv) > 1 else "steering")
data = work / "data"
for corpus, files in {"web": 3, "code": 2, "books": 2}.items():  # one directory (and index) per corpus
    (data / corpus).mkdir(parents=True, exist_ok=True)
    for f in range(files):
        docs = [{"id": f"{corpus}/part{f}.jsonl:{k}", "tokens": [k] * (1 + k % 7)} for k in range(40 + 5 * f)]
        (data / corpus / f"part{f}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    write_index(data / corpus, tokens="tokens")

# --8<-- [start:spike]
# The loop: a stream of documents, input checkpoints every 20 steps.
stream_dir = str(work / "stream")
loader = ResumableDataLoader(ShardedStream(data / "web", seed=0, window=16), batch_size=4, collate_fn=list)
trained = {}  # step -> the documents it trained on (what a loop would log), to compare below
with InputCheckpointer(stream_dir, loader, every_n_steps=20) as ckpt:
    batches = (batch for epoch in range(10) for batch in loader)
    for step in range(1, 61):
        trained[step] = [doc["id"] for doc in next(batches)]
        ckpt.after_step(step)

# The loss spiked at step 43: which documents were in it? Computed from the checkpoint of step 40 and the shard
# table it records; no shard is read.
in_step_43 = samples_at(stream_dir, 43).keys[0]  # [(shard file, document number), ...]
print(in_step_43)
print([f"web/{file}:{k}" for file, k in in_step_43] == trained[43])
# The same on the command line: `python -m torch_input_ckpt samples DIR --steps 41:46`; then
# `--sample part1.jsonl:7` says at which steps that document was read.

# The recipe: the model restarts from its checkpoint of step 40; the data skips steps 41..45.
loader = ResumableDataLoader(ShardedStream(data / "web", seed=0, window=16), batch_size=4, collate_fn=list)
with InputCheckpointer(stream_dir, loader, every_n_steps=20) as ckpt:
    step = ckpt.restore(40, skip_steps=5)  # -> 45: the data stands where step 45 left it
    first = [doc["id"] for doc in next(iter(loader))]  # step 46: what it was in the first run
print(step, first == trained[46])
# --8<-- [end:spike]

# --8<-- [start:report]
# A mixture of three corpora; at step 30 the run resumes with an anneal (more books), and the report shows it.
mixture_dir = str(work / "mixture")


def mixture_loader(weights):
    corpora = {name: ShardedStream(data / name, seed=1) for name in ("web", "code", "books")}
    return ResumableDataLoader(Mixture(corpora, weights), batch_size=8, shuffle=True, collate_fn=list)


for weights, steps in (({"web": 6, "code": 3, "books": 1}, range(1, 31)), ({"web": 2, "code": 2, "books": 6}, None)):
    loader = mixture_loader(weights)
    with InputCheckpointer(mixture_dir, loader, every_n_steps=10, keep_last=None) as ckpt:  # all: the plot's points
        start = ckpt.restore_or_save_initial() or 0
        batches = (batch for epoch in range(20) for batch in loader)
        for step in steps or range(start + 1, 91):
            next(batches)
            ckpt.after_step(step)

# `python -m torch_input_ckpt report DIR --plot FILE.png` (add --json for the numbers), here in this process:
main(["report", mixture_dir, "--plot", str(work / "mixture.png")])
# --8<-- [end:report]
