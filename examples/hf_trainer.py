"""A Hugging Face Trainer whose data resumes exactly: run it, kill it, run it again. A tiny GPT-2 built from a
config (nothing is downloaded). A rerun continues with exactly the batch after the newest complete checkpoint —
same samples, same order, same random draws — without replaying the epoch; a checkpoint named on the command line
(`python hf_trainer.py OUT OUT/checkpoint-8`, a rollback) resumes from that one."""

import os
import sys

import torch
from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from torch_input_ckpt.hf import ResumableTrainer


class Tokens(torch.utils.data.Dataset):
    def __len__(self):
        return 1000

    def __getitem__(self, i):
        ids = torch.randint(0, 64, (16,))  # drawn per sample: the same draws after a resume
        return {"input_ids": ids, "labels": ids}


class Trainer(ResumableTrainer):  # prints what each micro-batch trains on, to compare runs
    def compute_loss(self, model, inputs, *args, **kwargs):
        print(self.state.global_step + 1, inputs["input_ids"][:, :3].tolist(), flush=True)
        return super().compute_loss(model, inputs, *args, **kwargs)


out = sys.argv[1] if len(sys.argv) > 1 else "out"
torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2))
args = TrainingArguments(
    out, per_device_train_batch_size=8, gradient_accumulation_steps=2, max_steps=12, save_steps=4,
    save_total_limit=2, dataloader_num_workers=2, use_cpu=True, report_to="none", disable_tqdm=True,
)  # fmt: skip
trainer = Trainer(model=model, args=args, train_dataset=Tokens())
if len(sys.argv) > 2:
    trainer.train(resume_from_checkpoint=sys.argv[2])
else:
    trainer.train(resume_from_checkpoint=get_last_checkpoint(out) if os.path.isdir(out) else None)
