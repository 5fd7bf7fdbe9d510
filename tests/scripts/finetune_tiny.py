"""Fine-tune the tiny text classifier; run by the tests as a subprocess (killed, resumed, launched twice).

usage: finetune_tiny.py MODEL OUTPUT_DIR [--resume] [--step-seconds S] [--eval-size N] [--max-steps N]
                        [--checkpoint-every N|default] [--stream] [--record]

--stream reads the training data as a stream (JSON lines files, load_dataset(..., streaming=True)), and
--record writes which rows each process trained on, per pass, to OUTPUT_DIR/seen{rank}.json.
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
parser.add_argument("--checkpoint-every", default="4")  # "default": leave it to taskzoo
parser.add_argument("--stream", action="store_true")
parser.add_argument("--record", action="store_true")
args = parser.parse_args()

quiet_libraries()
rank = int(os.environ.get("RANK", 0))
zoo = taskzoo.load("text-classification", model=args.model, device="cpu")
if args.step_seconds:
    zoo.on_optimizer_step = lambda model: time.sleep(args.step_seconds)
train = toy_dataset("text-classification", 96, seed=0)
if args.stream:
    from datasets import Dataset, load_dataset

    # Four files (shards), written once by the first process to get here; the others wait for them.
    files = [f"{args.output_dir}-data/part{i}.jsonl" for i in range(4)]
    if rank == 0 and not os.path.exists(files[-1]):
        os.makedirs(os.path.dirname(files[0]), exist_ok=True)
        names = train.features["label"].names
        rows = Dataset.from_dict({"text": train["text"], "label": [names[i] for i in train["label"]],
                                  "id": list(range(len(train)))})
        for i, file in enumerate(files):
            rows.shard(4, i, contiguous=True).to_json(file + ".tmp")
            os.replace(file + ".tmp", file)
    while not os.path.exists(files[-1]):
        time.sleep(0.1)
    train = load_dataset("json", data_files=files, split="train", streaming=True)
if args.record:
    seen, collate = [], zoo.collate
    zoo.collate = lambda rows: (seen.append([row["id"] for row in rows]) if "id" in rows[0] else None,
                                collate(rows))[1]
options = {} if args.checkpoint_every == "default" else {"checkpoint_every": int(args.checkpoint_every)}
result = zoo.finetune(
    train, eval=toy_dataset("text-classification", args.eval_size, seed=1) if args.eval_size else None,
    output_dir=args.output_dir, max_steps=args.max_steps, batch_size=8, learning_rate=3e-3, **options,
    eval_every=8, log_every=2, resume_from="latest" if args.resume else None, progress=False, plot=False,
)
# Each process reports what it ended with, so that the tests can compare ranks.
checksum = sum(float(p.detach().double().sum()) for p in zoo.model.parameters())
with open(f"{args.output_dir}/rank{rank}.json", "w") as handle:
    json.dump({"checksum": checksum, "steps": result.steps, "final_metrics": result.final_metrics}, handle)
if args.record:
    with open(f"{args.output_dir}/seen{rank}.json", "w") as handle:
        json.dump(seen, handle)
