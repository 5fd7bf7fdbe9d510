"""Benchmark: fine-tuning samples/second of taskzoo's loop vs the HF Trainer vs a minimal Accelerate loop.

All three train the same MiniLM classifier (fresh copy each) on the same sentences with the same
collate function (tokenisation inside, as taskzoo does), batch size, learning rate, steps and precision,
back to back in one process. Prints samples/s, the ratios, each side's final training loss and its
peak memory (each side alone in a fresh run of this script, model loading included).

    python bench/finetune_speed.py [--steps 30] [--batch-size 32] [--precision no|bf16]
"""

import argparse
import os
import tempfile
import time

import torch
from datasets import Dataset
from torch.utils.data import DataLoader

import taskzoo
from common import MEMORY_OF, PeakMemory, minilm_classifier, mixed_length_sentences, side_peak_memory
from taskzoo.demo import quiet_libraries
from taskzoo.accelerators import new_accelerator

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=30)
parser.add_argument("--batch-size", type=int, default=32)
parser.add_argument("--precision", default="no", choices=["no", "bf16"])
args = parser.parse_args()
quiet_libraries()

texts = mixed_length_sentences(args.steps * args.batch_size)
data = Dataset.from_dict({"text": texts, "label": [("negative", "positive")[len(t) % 2] for t in texts]})
folder = minilm_classifier()
samples = args.steps * args.batch_size


def fresh():
    zoo = taskzoo.load("text-classification", model=folder, device="cpu")
    torch.manual_seed(0)
    zoo.prepare_for_training(data)  # the same new head for the data's label names, on every side
    return zoo, zoo.prepare(data, training=True)


def run_taskzoo(group_by_length=True):
    zoo, _ = fresh()
    result = zoo.finetune(data, max_steps=args.steps, batch_size=args.batch_size, learning_rate=2e-5,
                          group_by_length=group_by_length,
                          mixed_precision=args.precision, progress=False, save_checkpoints=False, plot=False,
                          log_every=args.steps, max_grad_norm=1.0)
    return result.history[-1]["loss"]


def run_minimal_accelerate():
    zoo, prepared = fresh()
    accelerator = new_accelerator(mixed_precision=args.precision)
    loader = DataLoader(prepared, batch_size=args.batch_size, shuffle=True, collate_fn=zoo.collate)
    optimizer = torch.optim.AdamW(zoo.model.parameters(), lr=2e-5)
    model, optimizer, loader = accelerator.prepare(zoo.model, optimizer, loader)
    model.train()
    for step, batch in enumerate(loader):
        loss = model(**batch).loss
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if step + 1 == args.steps:
            return loss.item()


def run_trainer():
    from transformers import Trainer, TrainingArguments

    zoo, prepared = fresh()
    new_accelerator()  # start the Trainer from a clean Accelerate state, as in a fresh process
    arguments = TrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.batch_size,
                                  max_steps=args.steps, learning_rate=2e-5, report_to=[], save_strategy="no",
                                  logging_steps=args.steps, use_cpu=True, remove_unused_columns=False,
                                  bf16=args.precision == "bf16", disable_tqdm=True, dataloader_num_workers=0)
    trainer = Trainer(model=zoo.model, args=arguments, train_dataset=prepared, data_collator=zoo.collate)
    return trainer.train().training_loss


sides = {"minimal Accelerate loop": run_minimal_accelerate, "HF Trainer": run_trainer,
         "taskzoo, group_by_length=False": lambda: run_taskzoo(False), "taskzoo finetune": run_taskzoo}
if os.environ.get(MEMORY_OF):  # this run measures one side's memory (see common.side_peak_memory)
    with PeakMemory() as memory:
        sides[os.environ[MEMORY_OF]]()
    print(f"peak MiB {memory.megabytes:.1f}")
    raise SystemExit

rows = []
for name, run in sides.items():
    started = time.perf_counter()
    loss = run()
    rows.append((name, samples / (time.perf_counter() - started), loss))

print(f"{args.steps} steps x batch {args.batch_size}, MiniLM classifier, precision {args.precision}, "
      f"torch threads {torch.get_num_threads()}")
ours = rows[-1][1]
for name, speed, loss in rows:
    print(f"{name:32} {speed:8.1f} samples/s   taskzoo / this = {ours / speed:.2f}   last loss {loss:.4f}   "
          f"peak {side_peak_memory(name):6.0f} MiB", flush=True)
