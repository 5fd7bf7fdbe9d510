"""Benchmark: fine-tuning a MiniLM classifier on mixed-length sentences, taskzoo vs the HF Trainer.

Default (--baseline docs): each side from the raw data (sentences and string labels), as its users write it.
- The HF Trainer as its docs set it up: the sentences tokenised with ``datasets.map`` (``truncation=True``,
  the labels mapped through the model's ``label2id``, the token counts as a ``length`` column),
  ``DataCollatorWithPadding``, ``train_sampling_strategy="group_by_length"`` (5.x's name for
  ``group_by_length=True``), ``optim="adamw_torch"`` (``--trainer-optim adamw_torch_fused`` for the fused
  one, which is its default on torch >= 2.8), the tokenizer as ``processing_class``, then
  ``trainer.save_model()``.
- taskzoo: ``zoo.finetune(data, output_dir=...)``, which tokenises in its collate and writes ``last/``.
Tokenisation, set-up and the final save are inside both clocks; loading the model is outside. Each side
pads in its own length-grouped order; the script counts the token slots (batch x padded length, summed over
the steps) each side's forward passes were given.

--baseline shared: the loop alone. The Trainer, a minimal Accelerate loop and taskzoo get the same prepared
data, taskzoo's collate and ONE index order (taskzoo's length-grouped order, seed 42, as every side's
sampler; --trainer-order own gives the Trainer its own grouping); nothing is saved. With one order, one
initial head and one seed the mean losses agree closely: a check that the sides did the same work.

Every side runs a few steps untimed first (warm-up), then --runs rounds, each in a rotated order; the median
is reported, in samples/s of wall time and in CPU seconds of this process (the figure to compare on a busy
machine: run with --threads 1 there). "mean loss" is the mean training loss over all steps (the Trainer's
training_loss). Peak memory: each side alone in a fresh run of this script, training only.

    python bench/finetune_speed.py [--baseline docs|shared] [--steps 40] [--batch-size 32] [--runs 3]
        [--precision no|bf16] [--trainer-optim adamw_torch [adamw_torch_fused]] [--trainer-order shared|own]
        [--threads N] [--no-memory]
"""

import argparse
import atexit
import functools
import os
import shutil
import tempfile

import torch
from datasets import Dataset
from transformers import DataCollatorWithPadding, PrinterCallback, Trainer, TrainingArguments

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
parser.add_argument("--baseline", default="docs", choices=["docs", "shared"])
parser.add_argument("--steps", type=int, default=40)
parser.add_argument("--batch-size", type=int, default=32)
parser.add_argument("--precision", default="no", choices=["no", "bf16"])
parser.add_argument("--runs", type=int, default=3)  # timed rounds; the median is reported
parser.add_argument("--warmup-steps", type=int, default=3)
# One Trainer side per optimizer named (its default on torch >= 2.8 is adamw_torch_fused).
parser.add_argument("--trainer-optim", nargs="+", default=["adamw_torch"], choices=["adamw_torch", "adamw_torch_fused"])
parser.add_argument("--trainer-order", default="shared", choices=["shared", "own"])  # --baseline shared only
parser.add_argument("--threads", type=int, default=None)  # torch threads; default: torch's own choice
parser.add_argument("--no-memory", action="store_true")  # skip the peak-memory runs
args = parser.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)
print(cpu_line(), flush=True)  # the figures below depend on it (bf16 and int8 above all)
quiet_libraries()

SEED, LEARNING_RATE = 42, 2e-5
SCRATCH = tempfile.mkdtemp(prefix="finetune-speed-")  # every run's output folder; removed at exit
atexit.register(shutil.rmtree, SCRATCH, ignore_errors=True)
new_folder = functools.partial(tempfile.mkdtemp, dir=SCRATCH)
texts = mixed_length_sentences(args.steps * args.batch_size)
data = Dataset.from_dict({"text": texts, "label": [("negative", "positive")[len(t) % 2] for t in texts]})
folder = minilm_classifier()
token_slots: dict[str, int] = {}  # side -> batch x padded length, summed over the forward passes of its last run


def fresh():
    """A freshly loaded classifier with the same new head on every side, and the data prepared for it."""
    zoo = taskzoo.load("text-classification", model=folder, device="cpu")
    torch.manual_seed(0)
    zoo.prepare_for_training(data)
    prepared = zoo.prepare(data, training=True)
    return zoo, prepared.add_column("length", zoo.train_lengths(prepared))  # the length column (shared mode)


def counting_slots(side: str, model):
    """Count the token slots of every forward pass of ``model`` under ``side`` (a hook: no change to the run)."""
    token_slots[side] = 0

    def count(module, positional, named):
        token_slots[side] += named["input_ids"].numel() if "input_ids" in named else 0

    return model.register_forward_pre_hook(count, with_kwargs=True)


# ------------------------------------------------------------------------------ --baseline docs (default)
def run_taskzoo_from_raw(zoo, prepared, steps):
    """As taskzoo's docs show: the raw data in, the fine-tuned model written to output_dir/last."""
    hook = counting_slots("taskzoo finetune", zoo.model)
    result = zoo.finetune(data, output_dir=new_folder(), max_steps=steps, batch_size=args.batch_size,
                          learning_rate=LEARNING_RATE, mixed_precision=args.precision, progress=False,
                          log_every=steps, seed=SEED)
    hook.remove()
    return result.history[-1]["loss"]  # the mean over all steps (one log line)


def run_trainer_as_documented(zoo, prepared, steps, optim):
    """As the Trainer's text-classification docs show, with group_by_length on the token counts."""
    new_accelerator()  # start the Trainer from a clean Accelerate state, as in a fresh process
    model, tokenizer = zoo.model, zoo.processor
    hook = counting_slots(trainer_side(optim), model)

    label2id = model.config.label2id

    def preprocess(batch):  # (what it refers to is hashed for datasets' cache fingerprint: not the model)
        encoded = tokenizer(batch["text"], truncation=True)
        encoded["label"] = [label2id[name] for name in batch["label"]]
        encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
        return encoded

    tokenized = data.map(preprocess, batched=True, remove_columns=["text"])
    arguments = TrainingArguments(output_dir=new_folder(), per_device_train_batch_size=args.batch_size,
                                  max_steps=steps, learning_rate=LEARNING_RATE, optim=optim,
                                  train_sampling_strategy="group_by_length", length_column_name="length",
                                  save_strategy="no", logging_steps=steps, bf16=args.precision == "bf16",
                                  disable_tqdm=True, seed=SEED)
    trainer = Trainer(model=model, args=arguments, train_dataset=tokenized, processing_class=tokenizer,
                      data_collator=DataCollatorWithPadding(tokenizer))
    trainer.remove_callback(PrinterCallback)  # its log lines, not its work
    loss = trainer.train().training_loss
    trainer.save_model()
    hook.remove()
    return loss


# ------------------------------------------------------------------------------ --baseline shared
def shared_order():
    _, prepared = fresh()
    return list(LengthGroupedSampler(prepared["length"], args.batch_size, SEED))


def run_taskzoo_loop(zoo, prepared, steps):  # the raw data in, nothing written
    result = zoo.finetune(data, max_steps=steps, batch_size=args.batch_size, learning_rate=LEARNING_RATE,
                          mixed_precision=args.precision, progress=False, save_checkpoints=False, plot=False,
                          log_every=steps, seed=SEED)
    return result.history[-1]["loss"]


def run_minimal_accelerate(zoo, prepared, steps):
    return minimal_accelerate_loop(zoo, prepared, steps, args.batch_size, LEARNING_RATE, args.precision,
                                   sampler=ORDER, seed=SEED)


class SharedOrderTrainer(Trainer):
    def _get_train_sampler(self, train_dataset=None):
        return ORDER if args.trainer_order == "shared" else super()._get_train_sampler(train_dataset)


def run_trainer_shared(zoo, prepared, steps, optim):
    new_accelerator()
    arguments = TrainingArguments(output_dir=new_folder(), per_device_train_batch_size=args.batch_size,
                                  max_steps=steps, learning_rate=LEARNING_RATE, optim=optim,
                                  train_sampling_strategy="group_by_length", length_column_name="length",
                                  save_strategy="no", logging_steps=steps, remove_unused_columns=False,
                                  bf16=args.precision == "bf16", disable_tqdm=True, seed=SEED)
    trainer = SharedOrderTrainer(model=zoo.model, args=arguments, train_dataset=prepared, data_collator=zoo.collate)
    trainer.remove_callback(PrinterCallback)
    return trainer.train().training_loss


def trainer_side(optim: str) -> str:
    if args.baseline == "docs":
        return f"HF Trainer as documented ({optim}, group_by_length)"
    return f"HF Trainer ({optim}), {args.trainer_order} order"


run_trainer = run_trainer_as_documented if args.baseline == "docs" else run_trainer_shared
sides = {trainer_side(optim): functools.partial(run_trainer, optim=optim) for optim in args.trainer_optim}
if args.baseline == "docs":
    sides["taskzoo finetune"] = run_taskzoo_from_raw
else:
    ORDER = shared_order()
    sides.update({"minimal Accelerate loop": run_minimal_accelerate, "taskzoo finetune": run_taskzoo_loop})
if os.environ.get(MEMORY_OF):  # this run measures one side's memory (see common.side_peak_memory)
    loaded = fresh()
    with PeakMemory() as memory:
        sides[os.environ[MEMORY_OF]](*loaded, args.steps)
    print(f"peak MiB {memory.megabytes:.1f}")
    raise SystemExit

cpu_seconds = {}
speeds, losses = training_rounds(sides, fresh, args.steps, args.steps * args.batch_size, args.runs,
                                 args.warmup_steps, cpu_seconds=cpu_seconds)
print(f"--baseline {args.baseline}: {args.steps} steps x batch {args.batch_size}, MiniLM classifier, precision "
      f"{args.precision}, torch threads {torch.get_num_threads()}, median of {args.runs} rounds in rotating order")
if token_slots:
    print("token slots (batch x padded length, summed over the steps): "
          + ", ".join(f"{side} {slots:,}" for side, slots in token_slots.items()))
print_training_rows(speeds, losses, ours="taskzoo finetune", cpu_seconds=cpu_seconds, memory=not args.no_memory)
