"""Benchmark: fine-tuning samples/second of taskzoo's loop vs the HF Trainer vs a minimal Accelerate loop.

All three train the same MiniLM classifier (a fresh copy each, loaded before the clock starts) on the same
sentences in ONE index order: taskzoo's length-grouped order (its LengthGroupedSampler, seed 42), which the
Trainer and the minimal loop get as their sampler. The Trainer runs as its users would for mixed-length text:
train_sampling_strategy="group_by_length" with a length column and optim="adamw_torch" (torch's AdamW, as
the other two use); only its sampler is swapped for the shared order (--trainer-order own keeps its own
length grouping), and the script prints how much each order pads. Same collate function (tokenisation
inside, as taskzoo does), batch size, learning rate and linear schedule, gradient clipping, seed and
precision everywhere.

Every side runs a few steps untimed first (warm-up), then --runs rounds, each in a rotated order; samples/s
is the median. "mean loss" is the mean training loss over all steps on every side (the Trainer's
training_loss): with one order, one initial head and one seed the three should agree closely. Peak memory:
each side alone in a fresh run of this script, training only (the model is loaded before).

    python bench/finetune_speed.py [--steps 20] [--batch-size 32] [--precision no|bf16] [--runs 3]
        [--trainer-order shared|own]
"""

import argparse
import os
import tempfile

import torch
from datasets import Dataset
from transformers import PrinterCallback, Trainer, TrainingArguments
from transformers.trainer_pt_utils import get_length_grouped_indices

import taskzoo
from common import (
    MEMORY_OF,
    PeakMemory,
    cpu_line,
    minilm_classifier,
    minimal_accelerate_loop,
    mixed_length_sentences,
    print_training_rows,
    training_rounds,
)
from taskzoo.accelerators import new_accelerator
from taskzoo.data import LengthGroupedSampler
from taskzoo.demo import quiet_libraries

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--batch-size", type=int, default=32)
parser.add_argument("--precision", default="no", choices=["no", "bf16"])
parser.add_argument("--runs", type=int, default=3)  # timed rounds; the median is reported
parser.add_argument("--warmup-steps", type=int, default=3)
parser.add_argument("--trainer-order", default="shared", choices=["shared", "own"])  # own: the Trainer's grouping
args = parser.parse_args()
print(cpu_line(), flush=True)  # the figures below depend on it (bf16 and int8 above all)
quiet_libraries()

SEED, LEARNING_RATE = 42, 2e-5
texts = mixed_length_sentences(args.steps * args.batch_size)
data = Dataset.from_dict({"text": texts, "label": [("negative", "positive")[len(t) % 2] for t in texts]})
folder = minilm_classifier()


def fresh():
    """A freshly loaded classifier with the same new head on every side, and the data prepared for it."""
    zoo = taskzoo.load("text-classification", model=folder, device="cpu")
    torch.manual_seed(0)
    zoo.prepare_for_training(data)
    prepared = zoo.prepare(data, training=True)
    return zoo, prepared.add_column("length", zoo.train_lengths(prepared))  # the Trainer's length column


probe, prepared = fresh()
order = list(LengthGroupedSampler(prepared["length"], args.batch_size, SEED))  # the one order every side gets


def run_taskzoo(zoo, prepared, steps):  # given the raw data, as a user would
    result = zoo.finetune(data, max_steps=steps, batch_size=args.batch_size, learning_rate=LEARNING_RATE,
                          mixed_precision=args.precision, progress=False, save_checkpoints=False, plot=False,
                          log_every=steps, max_grad_norm=1.0, seed=SEED)
    return result.history[-1]["loss"]  # the mean over all steps (one log line)


def run_minimal_accelerate(zoo, prepared, steps):
    return minimal_accelerate_loop(zoo, prepared, steps, args.batch_size, LEARNING_RATE, args.precision,
                                   sampler=order, seed=SEED)


class SharedOrderTrainer(Trainer):
    def _get_train_sampler(self, train_dataset=None):
        return order if args.trainer_order == "shared" else super()._get_train_sampler(train_dataset)


def run_trainer(zoo, prepared, steps):
    new_accelerator()  # start the Trainer from a clean Accelerate state, as in a fresh process
    arguments = TrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.batch_size,
                                  max_steps=steps, learning_rate=LEARNING_RATE, optim="adamw_torch",
                                  train_sampling_strategy="group_by_length", length_column_name="length",
                                  report_to=[], save_strategy="no", logging_steps=steps, use_cpu=True,
                                  remove_unused_columns=False, bf16=args.precision == "bf16", disable_tqdm=True,
                                  dataloader_num_workers=0, seed=SEED)
    trainer = SharedOrderTrainer(model=zoo.model, args=arguments, train_dataset=prepared, data_collator=zoo.collate)
    trainer.remove_callback(PrinterCallback)  # its log lines, not its work
    return trainer.train().training_loss


def padding_share(indices: list[int]) -> float:
    """The share of the token slots in this order's batches that are padding."""
    tokens = [len(ids) for ids in probe.processor(texts, truncation=True)["input_ids"]]
    slots = used = 0
    for start in range(0, len(indices), args.batch_size):
        batch = [tokens[i] for i in indices[start:start + args.batch_size]]
        slots, used = slots + max(batch) * len(batch), used + sum(batch)
    return 1 - used / slots


sides = {"HF Trainer (group_by_length, adamw_torch)": run_trainer, "minimal Accelerate loop": run_minimal_accelerate,
         "taskzoo finetune": run_taskzoo}
if os.environ.get(MEMORY_OF):  # this run measures one side's memory (see common.side_peak_memory)
    loaded = fresh()
    with PeakMemory() as memory:
        sides[os.environ[MEMORY_OF]](*loaded, args.steps)
    print(f"peak MiB {memory.megabytes:.1f}")
    raise SystemExit

speeds, losses = training_rounds(sides, fresh, args.steps, args.steps * args.batch_size, args.runs, args.warmup_steps)
print(f"{args.steps} steps x batch {args.batch_size}, MiniLM classifier, precision {args.precision}, "
      f"torch threads {torch.get_num_threads()}, median of {args.runs} rounds in rotating order")
trainers_own = get_length_grouped_indices(prepared["length"], args.batch_size,
                                          generator=torch.Generator().manual_seed(SEED))
print(f"padding share of the token slots: the shared order {padding_share(order):.1%}, the Trainer's own "
      f"group_by_length order {padding_share(trainers_own):.1%}, a random order "
      f"{padding_share(torch.randperm(len(texts), generator=torch.Generator().manual_seed(SEED)).tolist()):.1%}")
print_training_rows(speeds, losses, ours="taskzoo finetune")
