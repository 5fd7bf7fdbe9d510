"""Benchmark: taskzoo sentence-similarity predict vs sentence-transformers' own encode + cosine.

Same packaged all-MiniLM-L6-v2, same mixed-length pairs, back to back in one process; prints times, the
ratios, peak memory and the largest score difference.

    python bench/sentence_similarity.py [--pairs 500]
"""

import argparse

import torch
from sentence_transformers import SentenceTransformer

import taskzoo
from common import compare_with_pipeline, mixed_length_sentences
from taskzoo.demo import quiet_libraries
from taskzoo.models import packaged_model_path

parser = argparse.ArgumentParser()
parser.add_argument("--pairs", type=int, default=500)
args = parser.parse_args()
quiet_libraries()

left, right = mixed_length_sentences(args.pairs, seed=1), mixed_length_sentences(args.pairs, seed=2)
pairs = list(zip(left, right))
reference_model = SentenceTransformer(str(packaged_model_path("all-MiniLM-L6-v2")), device="cpu")
zoo = taskzoo.load("sentence-similarity", model="all-MiniLM-L6-v2", device="cpu")


def encode_and_compare(batch_size: int) -> list[float]:
    """What a sentence-transformers user writes: encode each side, then the cosine of each pair."""
    a = reference_model.encode(left, batch_size=batch_size, convert_to_tensor=True)
    b = reference_model.encode(right, batch_size=batch_size, convert_to_tensor=True)
    return torch.nn.functional.cosine_similarity(a, b).tolist()


def agreement(ours, theirs) -> str:
    return f"largest score difference {max(abs(a['score'] - b) for a, b in zip(ours, theirs)):.1e}"


compare_with_pipeline(
    f"{len(pairs)} mixed-length pairs, all-MiniLM-L6-v2",
    encode_and_compare, lambda **options: zoo.predict(pairs, batch_size=32, **options), agreement,
    batch_sizes=(64, 128), baseline="sentence-transformers encode + cosine", default_batch_size=32,
    variants=[("batch_size=32, fp32", {}), ("batch_size=32, bf16", {"mixed_precision": "bf16"})])
