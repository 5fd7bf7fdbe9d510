"""Benchmark: strategy="freeze" with cached frozen features vs running the frozen body every epoch.

Both sides fine-tune the same new classification head on the same data, batch size and epochs, evaluating
on held-out data after every epoch, back to back in one process. The cached side runs the body once over
the training and the evaluation data; the other runs it over both every epoch. Each side is warmed up
first, then timed ``--repeats`` times in rotating order; medians. Two ratios: per epoch once the cache is
built (training and evaluation, what each further epoch costs), and of the whole run per epoch, building the
cache included (a run of E epochs saves at most E-fold). Agreement: the cached run's last evaluation (from
cached features) equals evaluating its final model the ordinary way (the body run again); held-out accuracy
of both sides. (The heads themselves differ a little: running the body in training mode applies dropout.)

    python bench/cached_features.py                    # text: the packaged all-MiniLM-L6-v2
    python bench/cached_features.py --body dinov2-small --train 96 --eval 32
                                                       # images: a randomly initialised DINOv2-small (224 px)
    python bench/cached_features.py --memory           # also each side's peak memory, each alone
"""

import argparse
import os
import random
import statistics
import tempfile
import time

import taskzoo
from common import MEMORY_OF, PeakMemory, cpu_line, side_peak_memory
from taskzoo.demo import quiet_libraries

parser = argparse.ArgumentParser()
parser.add_argument("--body", choices=("minilm", "dinov2-small"), default="minilm")
parser.add_argument("--train", type=int, default=400, help="training rows")
parser.add_argument("--eval", type=int, default=200, help="held-out rows, evaluated after every epoch")
parser.add_argument("--epochs", type=int, default=5)
parser.add_argument("--repeats", type=int, default=3)
parser.add_argument("--memory", action="store_true", help="measure each side's peak memory in a fresh run")
args = parser.parse_args()
print(cpu_line(), flush=True)  # the figures below depend on it (bf16 and int8 above all)
quiet_libraries()


def sentences(n: int, seed: int) -> list[dict]:
    """Shuffled, shortened sentences about three topics, labelled by topic."""
    rng = random.Random(seed)
    topics = {"sport": "The team won the match after a late goal in the second half of the game",
              "food": "This restaurant serves fresh pasta with a rich tomato sauce and warm bread",
              "tech": "The new phone has a faster chip, a brighter screen and a longer battery life"}
    rows = []
    for i in range(n):
        label = list(topics)[i % 3]
        words = topics[label].split()
        rng.shuffle(words)
        rows.append({"text": " ".join(words[: rng.randint(5, len(words))]), "label": label})
    return rows


def dinov2_small() -> str:
    """DINOv2-small's architecture (ViT-S/14 at 224 px, 22M parameters) with random weights: no hub here."""
    import torch
    from transformers import Dinov2Config, Dinov2ForImageClassification, ViTImageProcessorPil

    from taskzoo.tasks.image_classification import ImageClassification

    labels = list(ImageClassification.SHAPES)
    folder = tempfile.mkdtemp(prefix="bench-dinov2-small-")
    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, patch_size=14,
                          image_size=224, num_labels=len(labels), id2label=dict(enumerate(labels)))
    Dinov2ForImageClassification(config).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 224, "width": 224}).save_pretrained(folder)
    return folder


if args.body == "minilm":
    task, model, learning_rate = "text-classification", "all-MiniLM-L6-v2", 1e-2
    train, held_out = sentences(args.train, seed=0), sentences(args.eval, seed=1)
else:
    from taskzoo.testing import toy_dataset

    task, model, learning_rate = "image-classification", dinov2_small(), 1e-2
    train, held_out = toy_dataset(task, args.train, seed=0), toy_dataset(task, args.eval, seed=1)


def run(cache: bool, epochs: int = args.epochs, rows=train):
    """One fine-tuning run from the same starting model; returns (seconds of the whole call, seconds of its
    epochs alone, its evaluations, the task). The cache is built before the epochs start."""
    zoo = taskzoo.load(task, model=model, device="cpu")
    started = time.perf_counter()
    result = zoo.finetune(rows, eval=held_out, epochs=epochs, batch_size=32, learning_rate=learning_rate,
                          strategy="freeze", cache_features=cache, progress=False, save_checkpoints=False,
                          plot=False)
    seconds = time.perf_counter() - started
    evaluations = [{k: v for k, v in record.items() if k.startswith("eval_")} for record in result.history
                   if any(k.startswith("eval_") for k in record)]
    return seconds, result.seconds, evaluations, zoo


if os.environ.get(MEMORY_OF):  # this run measures one side's memory (see common.side_peak_memory)
    with PeakMemory() as memory:
        run(os.environ[MEMORY_OF] == "cached")
    print(f"peak MiB {memory.megabytes:.1f}")
    raise SystemExit

for cache in (False, True):  # warm-up: first-call costs (kernels, lazy imports) belong to neither side
    run(cache, epochs=1, rows=train[:64])
seconds, epoch_seconds, evaluations = {False: [], True: []}, {False: [], True: []}, {}
for repeat in range(args.repeats):
    for cache in ((False, True) if repeat % 2 == 0 else (True, False)):
        spent, in_epochs, evaluations[cache], zoo = run(cache)
        seconds[cache].append(spent / args.epochs)
        epoch_seconds[cache].append(in_epochs / args.epochs)
        if repeat == 0:  # the final model evaluated the ordinary way, the body run again
            evaluations[cache].append({f"eval_{k}": v for k, v in zoo.evaluate(held_out, batch_size=32).items()})
per_epoch = {cache: statistics.median(times) for cache, times in seconds.items()}
steady = {cache: statistics.median(times) for cache, times in epoch_seconds.items()}
cached_last, rerun = evaluations[True][-2:]
agree = all(abs(cached_last[k] - rerun[k]) < 1e-9 for k in rerun)
memory = {side: f", peak {side_peak_memory(side):.0f} MiB" if args.memory else "" for side in ("body", "cached")}

print(f"{task}, {model if args.body == 'minilm' else 'DINOv2-small (random weights)'} body frozen: "
      f"{len(train)} training rows, {len(held_out)} evaluated after each of {args.epochs} epochs, batch 32; "
      f"median of {args.repeats} (rotating order)")
for cache, side in ((False, "running the body every epoch"), (True, "cached frozen features      ")):
    print(f"{side}: {steady[cache]:.3f} s per epoch, {per_epoch[cache]:.2f} s per epoch of the whole run "
          f"({', '.join(f'{s:.2f}' for s in seconds[cache])}){memory['cached' if cache else 'body']}")
print(f"speed-up per epoch, training and evaluation: {steady[False] / steady[True]:.1f}x; whole run, building the "
      f"cache included: {per_epoch[False] / per_epoch[True]:.1f}x")
print(f"cached run's last evaluation {cached_last} equals its model evaluated with the body: {agree}")
print(f"held-out accuracy: cached {evaluations[True][-1]['eval_accuracy']:.3f}, "
      f"running the body {evaluations[False][-1]['eval_accuracy']:.3f}")
