"""Benchmark: taskzoo sentence-similarity predict vs sentence-transformers' own encode + cosine.

Same packaged all-MiniLM-L6-v2 (its Normalize module makes unit vectors on both sides), unique sentences
(no repeats for predict to save on), three mixes of lengths, and one query against many. The baseline is
what a sentence-transformers user writes, at its best batch size of those tried; taskzoo runs with its
default batching (batches of up to 4096 padded tokens), and optionally at fixed ``--batch-sizes`` too. All sides
are warmed up, then timed back to back in rotating order; medians of ``--repeats``. Agreement: the largest
score difference.

    python bench/sentence_similarity.py [--pairs 500] [--repeats 5] [--batch-sizes 32 64] [--bf16] [--threads N]
"""

import argparse
import random
import statistics
import time

import torch
from sentence_transformers import SentenceTransformer

import taskzoo
from common import WORDS, cpu_line, mixed_length_sentences
from taskzoo.demo import quiet_libraries
from taskzoo.models import packaged_model_path

parser = argparse.ArgumentParser()
parser.add_argument("--pairs", type=int, default=500)
parser.add_argument("--repeats", type=int, default=5)
parser.add_argument("--baseline-batch-sizes", type=int, nargs="+", default=[16, 32, 64, 128])
parser.add_argument("--batch-sizes", type=int, nargs="*", default=[],
                    help="taskzoo also at these fixed batch sizes (sentences per batch), each reported")
parser.add_argument("--bf16", action="store_true", help="also taskzoo with mixed_precision='bf16'")
parser.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
args = parser.parse_args()
print(cpu_line(), flush=True)  # the figures below depend on it (bf16 and int8 above all)
quiet_libraries()
if args.threads:  # on a machine shared with other work, 1 thread keeps threads from waiting on each other
    torch.set_num_threads(args.threads)
reference_model = SentenceTransformer(str(packaged_model_path("all-MiniLM-L6-v2")), device="cpu")
zoo = taskzoo.load("sentence-similarity", model="all-MiniLM-L6-v2", device="cpu")


def sentences(n: int, shortest: int, longest: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(shortest, longest))) for _ in range(n)]


def unique(make, n: int, seed: int) -> list[str]:
    """n distinct sentences (a repeat would be encoded once by taskzoo, twice by the baseline)."""
    found = list(dict.fromkeys(make(2 * n, seed)))
    return found[:n]


MIXES = {"short (3-12 words)": lambda n, seed: sentences(n, 3, 12, seed),
         "mixed (3-120 words, most short)": mixed_length_sentences,
         "long (40-120 words)": lambda n, seed: sentences(n, 40, 120, seed)}


def encode_and_compare(left, right, batch_size):
    """What a sentence-transformers user writes for pairs: encode each side, then the cosine of each pair."""
    a = reference_model.encode(left, batch_size=batch_size, convert_to_tensor=True)
    b = reference_model.encode(right, batch_size=batch_size, convert_to_tensor=True)
    return torch.nn.functional.cosine_similarity(a, b).tolist()


def query_against_many(query, many, batch_size):
    """...and for one query against many sentences."""
    vectors = reference_model.encode([query, *many], batch_size=batch_size, convert_to_tensor=True)
    return torch.nn.functional.cosine_similarity(vectors[:1], vectors[1:]).tolist()


def rotating_medians(sides: dict) -> tuple[dict, dict]:
    """{side: median seconds}, {side: last output}: each side once untimed, then timed rounds in rotating order."""
    outputs = {name: run() for name, run in sides.items()}  # warm-up
    seconds = {name: [] for name in sides}
    names = list(sides)
    for repeat in range(args.repeats):
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            started = time.perf_counter()
            outputs[name] = sides[name]()
            seconds[name].append(time.perf_counter() - started)
    return {name: statistics.median(times) for name, times in seconds.items()}, outputs


def report(title: str, baseline_run, taskzoo_run, scores_of) -> None:
    sides = {f"sentence-transformers, batch_size={size}": (lambda size=size: baseline_run(size))
             for size in args.baseline_batch_sizes}
    variants = [(None, "no")] + [(size, "no") for size in args.batch_sizes] + ([(None, "bf16")] if args.bf16 else [])
    sides.update({f"taskzoo predict, {'default batches' if size is None else f'batch_size={size}'}, "
                  f"{'fp32' if precision == 'no' else precision}":
                  (lambda size=size, precision=precision: taskzoo_run(size, precision))
                  for size, precision in variants})
    seconds, outputs = rotating_medians(sides)
    baselines = [name for name in sides if name.startswith("sentence")]
    best = min(baselines, key=seconds.get)
    print(f"\n{title}; torch threads {torch.get_num_threads()}, median of {args.repeats}")
    for name in sides:
        difference = max(abs(a - b) for a, b in zip(scores_of(outputs[name]), outputs[best]))
        ratio = f"{seconds[best] / seconds[name]:5.2f}x vs its best" if name not in baselines else ""
        print(f"  {name:45} {seconds[name]:7.2f} s {ratio:18} largest score difference {difference:.1e}", flush=True)


for mix, make in MIXES.items():
    left, right = unique(make, 2 * args.pairs, seed=1)[::2], unique(make, 2 * args.pairs, seed=1)[1::2]
    pairs = list(zip(left, right))
    report(f"{len(pairs)} pairs of {mix} sentences, all distinct",
           lambda size, left=left, right=right: encode_and_compare(left, right, size),
           lambda size, precision, pairs=pairs: zoo.predict(pairs, batch_size=size, mixed_precision=precision,
                                                            progress=False),
           lambda output: [row["score"] if isinstance(row, dict) else row for row in output])

many = unique(mixed_length_sentences, 2 * args.pairs, seed=3)
query = "the acting was superb and the music one of the best this year"
report(f"one query against {len(many)} mixed sentences",
       lambda size: query_against_many(query, many, size),
       lambda size, precision: zoo.predict({"source_sentence": query, "sentences": many}, batch_size=size,
                                           mixed_precision=precision, progress=False),
       lambda output: output)
