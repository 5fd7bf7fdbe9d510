"""Benchmark: strategy="freeze" with cached frozen features vs running the frozen body every epoch.

Both sides fine-tune the same classification head of all-MiniLM-L6-v2 (packaged, offline) on the same
data, batch size and epochs, back to back in one process; prints per-epoch times, the ratio, and a check
that both heads reach the same accuracy, and each side's peak memory (alone, in a fresh run).

    python bench/cached_features.py [--samples 512] [--epochs 3]
"""

import argparse
import os
import random
import time

import taskzoo
from common import MEMORY_OF, PeakMemory, side_peak_memory
from taskzoo.demo import quiet_libraries

parser = argparse.ArgumentParser()
parser.add_argument("--samples", type=int, default=512)
parser.add_argument("--epochs", type=int, default=3)
args = parser.parse_args()
quiet_libraries()

rng = random.Random(0)
topics = {"sport": "The team won the match after a late goal in the second half of the game",
          "food": "This restaurant serves fresh pasta with a rich tomato sauce and warm bread",
          "tech": "The new phone has a faster chip, a brighter screen and a longer battery life"}
rows = []
for i in range(args.samples):
    label = list(topics)[i % 3]
    words = topics[label].split()
    rng.shuffle(words)
    rows.append({"text": " ".join(words[: rng.randint(5, len(words))]), "label": label})
train, held_out = rows[: int(0.8 * len(rows))], rows[int(0.8 * len(rows)):]



def run(cache: bool):
    zoo = taskzoo.load("text-classification", model="all-MiniLM-L6-v2", device="cpu")
    zoo.finetune(train, epochs=args.epochs, batch_size=32, learning_rate=1e-2, strategy="freeze",
                 cache_features=cache, progress=False, save_checkpoints=False, plot=False)
    return zoo


if os.environ.get(MEMORY_OF):  # this run measures one side's memory (see common.side_peak_memory)
    with PeakMemory() as memory:
        run(os.environ[MEMORY_OF] == "cached")
    print(f"peak MiB {memory.megabytes:.1f}")
    raise SystemExit

seconds, accuracy = {}, {}
for cache in (False, True):
    started = time.perf_counter()
    zoo = run(cache)
    seconds[cache] = (time.perf_counter() - started) / args.epochs
    accuracy[cache] = zoo.evaluate(held_out)["accuracy"]

print(f"{len(train)} samples, {args.epochs} epochs, batch 32, all-MiniLM-L6-v2 body frozen")
print(f"running the body every epoch: {seconds[False]:.2f} s/epoch, held-out accuracy {accuracy[False]:.3f}, "
      f"peak {side_peak_memory('body'):.0f} MiB")
print(f"cached frozen features:       {seconds[True]:.2f} s/epoch (cache built once, included), "
      f"held-out accuracy {accuracy[True]:.3f}, peak {side_peak_memory('cached'):.0f} MiB")
print(f"speed-up per epoch: {seconds[False] / seconds[True]:.1f}x")
