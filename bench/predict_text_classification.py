"""Benchmark: taskzoo predict vs transformers.pipeline, text-classification on a MiniLM classifier.

Same model, same ~1,000 mixed-length sentences, back to back in one process. Prints each side's time,
the ratios, and how many labels agree.

    python bench/predict_text_classification.py [--sentences 1000]
"""

import argparse

import torch
from transformers import pipeline

import taskzoo
from common import minilm_classifier, mixed_length_sentences, timed
from taskzoo.demo import quiet_libraries

parser = argparse.ArgumentParser()
parser.add_argument("--sentences", type=int, default=1000)
args = parser.parse_args()
quiet_libraries()
torch.manual_seed(0)

texts = mixed_length_sentences(args.sentences)
folder = minilm_classifier()
classifier = pipeline("text-classification", model=str(folder), device="cpu")
classifier(texts[:8])  # warm-up
default_seconds, reference = timed(lambda: classifier(texts))  # the pipeline's default: batch_size=1
best_batch, best_seconds = None, float("inf")
for batch_size in (8, 16, 32, 64):
    seconds, _ = timed(lambda: classifier(texts, batch_size=batch_size), repeat=2)
    if seconds < best_seconds:
        best_batch, best_seconds = batch_size, seconds
reference_labels = [r["label"] for r in reference]

zoo = taskzoo.load("text-classification", model=folder, device="cpu")
zoo.predict(texts[:8])  # warm-up
rows = [("transformers.pipeline, batch_size=1 (default)", default_seconds, None),
        (f"transformers.pipeline, batch_size={best_batch} (its best)", best_seconds, None)]
for precision in ("no", "bf16"):
    seconds, ours = timed(lambda: zoo.predict(texts, batch_size=64, mixed_precision=precision, progress=False), repeat=2)
    agree = sum(a["label"] == b for a, b in zip(ours, reference_labels)) / len(texts)
    rows.append((f"taskzoo predict, batch_size=64, mixed_precision={precision!r}", seconds, agree))

print(f"{len(texts)} sentences, {folder.name} (all-MiniLM-L6-v2 + 2-label head), torch threads "
      f"{torch.get_num_threads()}")
print(f"{'side':62} {'seconds':>8} {'vs default':>10} {'vs best':>8} {'labels equal':>12}")
for name, seconds, agree in rows:
    agreement = "" if agree is None else f"{agree:.1%}"
    print(f"{name:62} {seconds:8.2f} {default_seconds / seconds:9.2f}x {best_seconds / seconds:7.2f}x "
          f"{agreement:>12}")
