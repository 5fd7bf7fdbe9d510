"""Benchmark: taskzoo sentence-similarity predict vs sentence-transformers' own encode + cosine.

Same packaged all-MiniLM-L6-v2, same pairs, back to back in one process; prints times, the ratio and the
largest score difference.

    python bench/sentence_similarity.py [--pairs 500]
"""

import argparse

import torch
from sentence_transformers import SentenceTransformer

import taskzoo
from common import mixed_length_sentences, timed
from taskzoo.demo import quiet_libraries
from taskzoo.models import packaged_model_path

parser = argparse.ArgumentParser()
parser.add_argument("--pairs", type=int, default=500)
args = parser.parse_args()
quiet_libraries()

left, right = mixed_length_sentences(args.pairs, seed=1), mixed_length_sentences(args.pairs, seed=2)
pairs = list(zip(left, right))
reference_model = SentenceTransformer(str(packaged_model_path("all-MiniLM-L6-v2")), device="cpu")


def reference():
    a = reference_model.encode(left, batch_size=64, convert_to_tensor=True)
    b = reference_model.encode(right, batch_size=64, convert_to_tensor=True)
    return torch.nn.functional.cosine_similarity(a, b).tolist()


zoo = taskzoo.load("sentence-similarity", model="all-MiniLM-L6-v2", device="cpu")
reference()  # warm-up both
zoo.predict(pairs[:8])
theirs_seconds, theirs = timed(reference, repeat=2)
ours_seconds, ours = timed(lambda: zoo.predict(pairs, batch_size=64), repeat=2)
difference = max(abs(a["score"] - b) for a, b in zip(ours, theirs))
print(f"{len(pairs)} mixed-length pairs, all-MiniLM-L6-v2, torch threads {torch.get_num_threads()}")
print(f"sentence-transformers encode + cosine (batch 64): {theirs_seconds:.2f} s")
print(f"taskzoo predict (batch 64 sentences): {ours_seconds:.2f} s")
print(f"ratio: {theirs_seconds / ours_seconds:.2f}x; largest score difference {difference:.2e}")
