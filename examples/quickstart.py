"""Quick start: model checkpoints every 10 steps (large, rare), input checkpoints every 4 (a few hundred bytes); on
a restart the model's step decides where the data continues. Run it, kill it at any step, run it again: the steps
after the newest model checkpoint train again on the same samples and draws (run it to the end and again: 31..39)."""

import os
import sys

import torch

from torch_input_ckpt import InputCheckpointer, ResumableDataLoader

root = sys.argv[1] if len(sys.argv) > 1 else "ckpt"


class Points(torch.utils.data.Dataset):
    def __len__(self):
        return 100

    def __getitem__(self, i):  # an augmentation drawn per sample: the same draws after a resume
        x = i / 100 + torch.randn(1).item() * 0.01
        return torch.tensor([x, 3 * i / 100 + 1])


dataset = Points()
torch.manual_seed(0)
model = torch.nn.Linear(1, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
num_epochs = 3


def train_step(batch):
    loss = torch.nn.functional.mse_loss(model(batch[:, :1]), batch[:, 1:])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


loader = ResumableDataLoader(dataset, batch_size=8, shuffle=True, seed=0, num_workers=2)
with InputCheckpointer(f"{root}/input", loader, every_n_steps=4) as input_ckpt:  # or every_n_seconds=600
    step = previous_model_step = 0
    if os.path.exists(f"{root}/model.pt"):  # a restart: resume from the model's step
        saved = torch.load(f"{root}/model.pt")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        step = previous_model_step = input_ckpt.restore(saved["step"])  # the data continues after that step
    else:
        input_ckpt.restore_or_save_initial()
    for epoch in range(loader.epoch, num_epochs):  # the loader knows its epoch: no set_epoch
        for batch in loader:  # or tqdm(loader, total=loader.batches_remaining)
            loss = train_step(batch)
            step += 1
            print(step, epoch, f"{loss:.6f}")
            model_step = step % 10 == 0
            input_ckpt.after_step(step, pin=model_step)  # on schedule; at a model step always, pinned
            if model_step:
                input_ckpt.flush()  # the input checkpoint of `step` is durable first
                state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}
                torch.save(state, f"{root}/model.pt.tmp")
                os.replace(f"{root}/model.pt.tmp", f"{root}/model.pt")
                input_ckpt.unpin(previous_model_step)  # that model checkpoint is gone: its input may go
                previous_model_step = step
