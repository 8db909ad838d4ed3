"""An Accelerate training loop whose data resumes exactly. `prepare_resumable` wraps the loader so that
`accelerator.prepare` passes it through (it would rebuild a plain DataLoader, losing the position), and
`register_for_checkpointing` puts it in `save_state`/`load_state`. Run it: 2 epochs of 10 batches, a state saved
every 5 steps. Run it again with a step (`python accelerate_loop.py DIR 5`): it loads the state of that step and
trains the steps after it on the same samples and draws."""

import os
import sys

import torch
from accelerate import Accelerator

from torch_input_ckpt import ResumableDataLoader
from torch_input_ckpt.hf import prepare_resumable


class Points(torch.utils.data.Dataset):
    def __len__(self):
        return 40

    def __getitem__(self, i):  # an augmentation drawn per sample: the same draws after a resume
        return torch.tensor([float(i), torch.rand(1).item()])


root = sys.argv[1] if len(sys.argv) > 1 else "accelerate_run"
resume_from = int(sys.argv[2]) if len(sys.argv) > 2 else None
accelerator = Accelerator(cpu=True)
torch.manual_seed(0)
model = torch.nn.Linear(1, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
loader = ResumableDataLoader(Points(), batch_size=4, shuffle=True, seed=0, num_workers=2)  # after Accelerator()
loader = prepare_resumable(accelerator, loader)
model, optimizer, loader = accelerator.prepare(model, optimizer, loader)  # our loader passes through
accelerator.register_for_checkpointing(loader)  # saved and restored by save_state / load_state

step = 0
if resume_from is not None:
    accelerator.load_state(os.path.join(root, f"step-{resume_from}"))  # model, optimizer and the data's position
    step = resume_from
for epoch in range(loader.epoch, 2):  # the loader knows its epoch
    for batch in loader:
        step += 1
        print(step, epoch, batch[:, 0].int().tolist(), [round(x, 6) for x in batch[:, 1].tolist()])
        loss = model(batch[:, 1:]).pow(2).mean()
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        if step % 5 == 0:
            accelerator.save_state(os.path.join(root, f"step-{step}"))
