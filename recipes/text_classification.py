"""Fine-tune a BERT-family classifier on SST-2 (movie-review sentiment) and report accuracy.

    accelerate launch recipes/text_classification.py --output-dir runs/sst2     # 1 or more GPUs
    python recipes/text_classification.py --max-steps 20                         # a quick CPU try

--dataset takes a hub name or a local folder with train.csv and validation.csv (or dev.csv, test.csv), columns
text and label (--text-column and --label-column name yours).
"""

import argparse
import json

import taskzoo
from _common import load_splits

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default="distilbert/distilbert-base-uncased")  # any AutoModelForSequenceClassification
parser.add_argument("--dataset", default="stanfordnlp/sst2")  # hub name or local folder
parser.add_argument("--text-column")  # your text column, when it is not called text
parser.add_argument("--label-column")  # your label column, when it is not called label
parser.add_argument("--output-dir", default="runs/text-classification")
parser.add_argument("--epochs", type=float, default=3)
parser.add_argument("--max-steps", type=int)  # overrides --epochs
parser.add_argument("--batch-size", type=int, default=32)  # per device
parser.add_argument("--learning-rate", type=float, default=2e-5)
parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
parser.add_argument("--strategy", default="full", choices=["full", "freeze", "lora"])
parser.add_argument("--resume", action="store_true")  # continue the interrupted run in --output-dir
parser.add_argument("--overwrite", action="store_true")  # start over in an --output-dir that holds a run
args = parser.parse_args()

# Load
train, held_out = load_splits(args.dataset, hub_columns={"sentence": "text"})  # SST-2 calls its texts sentence
columns = {args.text_column: "text", args.label_column: "label"}
columns = {k: v for k, v in columns.items() if k and k != v}
zoo = taskzoo.load("text-classification", model=args.model)

# Fine-tune
result = zoo.finetune(train, eval=held_out, columns=columns, output_dir=args.output_dir, epochs=args.epochs,
                      max_steps=args.max_steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                      mixed_precision=args.mixed_precision, strategy=args.strategy, warmup_ratio=0.06,
                      resume_from="latest" if args.resume else None, overwrite=args.overwrite)

# Evaluate and save
metrics = zoo.evaluate(held_out, columns=columns) if held_out is not None else {}
zoo.save(f"{args.output_dir}/final")
print(json.dumps({"recipe": "text-classification", "model": args.model, "dataset": args.dataset,
                  "steps": result.steps, "metrics": metrics}))
