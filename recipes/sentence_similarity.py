"""Fine-tune a sentence-transformer on STS-B and report Spearman correlation.

    accelerate launch recipes/sentence_similarity.py --output-dir runs/stsb
    python recipes/sentence_similarity.py --max-steps 20

--dataset takes a hub name or a local folder with train.csv and validation.csv or dev.csv (sentence1,sentence2,score).
Scores on a 0-5 scale are divided by 5.
"""

import argparse
import json

import taskzoo
from _common import load_splits

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default="all-MiniLM-L6-v2")  # packaged (offline); or any sentence-transformers model
parser.add_argument("--dataset", default="sentence-transformers/stsb")  # hub name or local folder
parser.add_argument("--output-dir", default="runs/sentence-similarity")
parser.add_argument("--epochs", type=float, default=4)
parser.add_argument("--max-steps", type=int)  # overrides --epochs
parser.add_argument("--batch-size", type=int, default=16)  # pairs per device
parser.add_argument("--learning-rate", type=float, default=2e-5)
parser.add_argument("--loss", default="cosine", choices=["cosine", "cosent"])
parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
parser.add_argument("--resume", action="store_true")  # continue the interrupted run in --output-dir
parser.add_argument("--overwrite", action="store_true")  # start over in an --output-dir that holds a run
args = parser.parse_args()

# Load
train, held_out = load_splits(args.dataset)
zoo = taskzoo.load("sentence-similarity", model=args.model, loss=args.loss)
before = zoo.evaluate(held_out) if held_out is not None else {}

# Fine-tune
result = zoo.finetune(train, eval=held_out, output_dir=args.output_dir, epochs=args.epochs,
                      max_steps=args.max_steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                      mixed_precision=args.mixed_precision, warmup_ratio=0.1,
                      resume_from="latest" if args.resume else None, overwrite=args.overwrite)

# Evaluate and save
after = zoo.evaluate(held_out) if held_out is not None else {}
zoo.save(f"{args.output_dir}/final")
print(json.dumps({"recipe": "sentence-similarity", "model": args.model, "dataset": args.dataset,
                  "steps": result.steps, "before": before, "metrics": after}))
