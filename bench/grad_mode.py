"""Benchmark: predict under torch.no_grad (what taskzoo uses) vs torch.inference_mode.

predict and evaluate run under no_grad so that tensors a model caches during them (BEiT's relative position
index, say) stay usable when the model is fine-tuned later in the same process; inference_mode would make
them "inference tensors" that autograd refuses. This measures what that choice costs: the same predict call,
once as it is and once wrapped in inference_mode (which no_grad inside it does not switch off), alternating,
in CPU seconds (process time: fair on a busy machine too) and wall seconds. Models: all-MiniLM-L6-v2
(sentence similarity, packaged) and ViT-Base/16 at 224 px (image classification, seeded random weights).

    python bench/grad_mode.py [--rounds 5] [--sentences 512] [--images 32]
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

import taskzoo
from common import cpu_line, mixed_length_sentences
from taskzoo.demo import quiet_libraries

parser = argparse.ArgumentParser()
parser.add_argument("--rounds", type=int, default=5)
parser.add_argument("--sentences", type=int, default=512)
parser.add_argument("--images", type=int, default=32)
args = parser.parse_args()
quiet_libraries()
print(cpu_line(), flush=True)  # the figures below depend on it (bf16 and int8 above all)


def timed(call) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    call()
    return time.process_time() - cpu, time.perf_counter() - wall


def compare(name: str, zoo, inputs, **options) -> None:
    options = dict(options, progress=False)
    zoo.predict(inputs[:8], **options)  # warm-up
    times = {"no_grad": [], "inference_mode": []}
    for _ in range(args.rounds):
        times["no_grad"].append(timed(lambda: zoo.predict(inputs, **options)))
        with torch.inference_mode():
            times["inference_mode"].append(timed(lambda: zoo.predict(inputs, **options)))
    medians = {mode: [statistics.median(column) for column in zip(*runs)] for mode, runs in times.items()}
    (cpu_ng, wall_ng), (cpu_im, wall_im) = medians["no_grad"], medians["inference_mode"]
    print(f"{name}: CPU s no_grad {cpu_ng:.3f} / inference_mode {cpu_im:.3f} (ratio {cpu_ng / cpu_im:.3f}); "
          f"wall s {wall_ng:.3f} / {wall_im:.3f} (ratio {wall_ng / wall_im:.3f}); median of {args.rounds} rounds")


compare("sentence-similarity, all-MiniLM-L6-v2", taskzoo.load("sentence-similarity", model="all-MiniLM-L6-v2",
                                                               device="cpu"),
        [(a, b) for a, b in zip(mixed_length_sentences(args.sentences, seed=0),
                                mixed_length_sentences(args.sentences, seed=1))], batch_size=32)

if not args.images:
    raise SystemExit
folder = Path(tempfile.mkdtemp(prefix="bench-vit-"))
torch.manual_seed(0)
ViTForImageClassification(ViTConfig(num_labels=10)).save_pretrained(folder)
ViTImageProcessorPil(size={"height": 224, "width": 224}).save_pretrained(folder)
rng = np.random.default_rng(0)
images = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(args.images)]
compare("image-classification, ViT-Base/16", taskzoo.load("image-classification", model=folder, device="cpu"),
        images, batch_size=16)
