"""Which data was in step N, and the recipe for a loss spike. The loop writes input checkpoints every 50 steps
(1,000 samples, batch 4, 2 batches per optimizer step); the samples of any step after a checkpoint are then
computed from the checkpoints alone, without the dataset. Then the loss "spiked" in steps 101..120: the model
restarts from step 100 and the data from where step 120 left it, skipping those steps."""

import subprocess
import sys

from torch_input_ckpt import InputCheckpointer, ResumableDataLoader, samples_at

directory = sys.argv[1] if len(sys.argv) > 1 else "ckpt"
trained = {}  # step -> the samples it trained on, to compare with what the checkpoints say

loader = ResumableDataLoader(list(range(1000)), batch_size=4, shuffle=True, seed=0)
with InputCheckpointer(directory, loader, every_n_steps=50) as ckpt:
    start = ckpt.restore_or_save_initial() or 0
    batches = (batch for epoch in range(10) for batch in loader)
    for step in range(start + 1, 121):
        trained[step] = []
        for _ in range(2):  # gradient accumulation: 2 batches per optimizer step
            trained[step] += next(batches).tolist()
        ckpt.after_step(step)

print(trained[113])  # what step 113 trained on
print(samples_at(directory, 113).keys[0])  # the same, computed from the checkpoint of step 100 (rank 0)
subprocess.run([sys.executable, "-m", "torch_input_ckpt", "samples", directory, "--step", "113"], check=True)
step_121 = samples_at(directory, 121).keys[0]  # what step 121 trains on, once steps 101..120 are skipped

# The recipe: the model checkpoint of step 100 is good; the data continues where step 120 left it.
loader = ResumableDataLoader(list(range(1000)), batch_size=4, shuffle=True, seed=0)
# --8<-- [start:recipe]
with InputCheckpointer(directory, loader, every_n_steps=50) as ckpt:
    step = ckpt.restore(100, skip_steps=20)  # -> 120: the data stands where step 120 left it (a checkpoint is saved)
    # model.load_state_dict(torch.load("model-100.pt"))  # the model restarts from 100
    loader.exclude(trained[113][:2])  # optional: never show these again, from the next epoch on
    it = iter(loader)
    first = next(it).tolist() + next(it).tolist()  # step 121
    ckpt.after_step(step + 1)
# --8<-- [end:recipe]
print(step, first == step_121, first)
subprocess.run([sys.executable, "-m", "torch_input_ckpt", "samples", directory, "--step", "113"], check=True)
