"""Benchmark: how long taskzoo.predict_batches.plan_batches takes to plan predict's batches, and what it saves.

Sentence lengths in tokens drawn from a log-normal (median ~20 tokens, capped at 256), as sentence-similarity
plans them: up to --max-tokens padded tokens a batch and a cost of --batch-cost tokens per batch. Reports the
median CPU time per plan over --repeats runs, for each count of sentences, and the padded tokens and batches
of the plan against plain "longest first, as many as fit" (no cost per batch).

    python bench/plan_batches.py
    python bench/plan_batches.py --counts 1000 5000 20000 --max-tokens 4096 --batch-cost 48
"""

import argparse
import random
import statistics
import time

from common import cpu_line
from taskzoo.predict_batches import plan_batches

parser = argparse.ArgumentParser()
parser.add_argument("--counts", type=int, nargs="+", default=[1000, 5000, 20000])
parser.add_argument("--max-tokens", type=int, default=4096)  # sentence-similarity's default batch_tokens
parser.add_argument("--batch-cost", type=float, default=48)  # its cost of one more batch on a CPU, in tokens
parser.add_argument("--repeats", type=int, default=5)
args = parser.parse_args()

print(cpu_line())
print(f"{'sentences':>9}  {'ms/plan':>8}  {'batches':>7}  {'padded tokens':>13}  {'greedy: batches, padded':>24}")
for count in args.counts:
    rng = random.Random(0)
    lengths = [min(256, max(3, round(rng.lognormvariate(3, 0.6)))) for _ in range(count)]
    times = []
    for _ in range(args.repeats):
        started = time.process_time()
        batches = plan_batches(lengths, max_tokens=args.max_tokens, batch_cost=args.batch_cost)
        times.append(time.process_time() - started)
    greedy = plan_batches(lengths, max_tokens=args.max_tokens)

    def padded(plan, lengths=lengths):  # bound now: the loop rebinds lengths
        return sum(len(batch) * max(lengths[i] for i in batch) for batch in plan) - sum(lengths)

    print(f"{count:>9}  {1000 * statistics.median(times):>8.1f}  {len(batches):>7}  {padded(batches):>13}  "
          f"{len(greedy):>15}, {padded(greedy):>7}")
