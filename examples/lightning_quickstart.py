"""A Lightning Trainer whose data resumes exactly. Run it: 20 steps, a model checkpoint every 3 steps, an input
checkpoint every 2 and at every model checkpoint. Run it again with a step (`python lightning_quickstart.py DIR 6`):
it resumes from the model checkpoint of that step with `fit(ckpt_path=...)`, as after a kill or a rollback, and the
callback restores the input checkpoint of that step: steps 7.. train on the same samples and augmentation draws."""

import glob
import os
import sys

import pytorch_lightning as pl  # or: import lightning.pytorch as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from torch_input_ckpt import ResumableDataLoader
from torch_input_ckpt.lightning import InputCheckpointCallback


class Points(torch.utils.data.Dataset):
    def __len__(self):
        return 40

    def __getitem__(self, i):  # an augmentation drawn per sample: the same draws after a resume
        return torch.tensor([float(i), torch.rand(1).item()])


class Model(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)

    def training_step(self, batch, batch_idx):
        print(self.global_step + 1, batch[:, 0].int().tolist(), [round(x, 6) for x in batch[:, 1].tolist()])
        return self.layer(batch[:, 1:]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        # Built here, under DDP it shards itself over the ranks.
        return ResumableDataLoader(Points(), batch_size=4, shuffle=True, seed=0, num_workers=2)


root = sys.argv[1] if len(sys.argv) > 1 else "lightning_run"
resume_from = sys.argv[2] if len(sys.argv) > 2 else None  # a step, or the newest model checkpoint if there is one
models = sorted(glob.glob(f"{root}/models/*-step={resume_from or '*'}.ckpt"), key=os.path.getmtime)
trainer = pl.Trainer(
    default_root_dir=root,
    max_steps=20,
    callbacks=[
        ModelCheckpoint(dirpath=f"{root}/models", every_n_train_steps=3, save_top_k=-1),
        InputCheckpointCallback(every_n_train_steps=2),  # files in <default_root_dir>/input_checkpoints
    ],
    accelerator="cpu",
    logger=False,
    enable_progress_bar=False,
    enable_model_summary=False,
)
trainer.fit(Model(), ckpt_path=models[-1] if models else None)  # the newest model checkpoint, if any
