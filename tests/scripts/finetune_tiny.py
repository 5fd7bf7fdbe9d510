"""Fine-tune the tiny text classifier; run by the tests as a subprocess (killed, resumed, launched twice).

usage: finetune_tiny.py MODEL OUTPUT_DIR [--resume] [--step-seconds S] [--eval-size N] [--max-steps N]
"""

import argparse
import json
import os
import time

import taskzoo
from taskzoo.demo import quiet_libraries
from taskzoo.testing import toy_dataset

parser = argparse.ArgumentParser()
parser.add_argument("model")
parser.add_argument("output_dir")
parser.add_argument("--resume", action="store_true")
parser.add_argument("--step-seconds", type=float, default=0.0)  # slows each step so a test can kill mid-run
parser.add_argument("--eval-size", type=int, default=0)
parser.add_argument("--max-steps", type=int, default=24)
args = parser.parse_args()

quiet_libraries()
zoo = taskzoo.load("text-classification", model=args.model, device="cpu")
if args.step_seconds:
    zoo.on_optimizer_step = lambda model: time.sleep(args.step_seconds)
result = zoo.finetune(
    toy_dataset("text-classification", 96, seed=0),
    eval=toy_dataset("text-classification", args.eval_size, seed=1) if args.eval_size else None,
    output_dir=args.output_dir, max_steps=args.max_steps, batch_size=8, learning_rate=3e-3, checkpoint_every=4,
    eval_every=8, log_every=2, resume_from="latest" if args.resume else None, progress=False, plot=False,
)
# Each process reports what it ended with, so that the tests can compare ranks.
rank = int(os.environ.get("RANK", 0))
checksum = sum(float(p.detach().double().sum()) for p in zoo.model.parameters())
with open(f"{args.output_dir}/rank{rank}.json", "w") as handle:
    json.dump({"checksum": checksum, "steps": result.steps, "final_metrics": result.final_metrics}, handle)
