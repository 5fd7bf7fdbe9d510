"""Fine-tune a Marian translation model on an English-to-German parallel corpus and report sacreBLEU.

    accelerate launch recipes/translation.py --output-dir runs/en-de
    python recipes/translation.py --max-steps 20

--dataset takes a hub name (WMT-style rows {"translation": {"en": ..., "de": ...}}) or a local folder with
train.jsonl and validation.jsonl or dev.jsonl (source,target columns or translation dicts).
"""

import argparse
import json

import taskzoo
from _common import load_splits

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default="Helsinki-NLP/opus-mt-en-de")  # any AutoModelForSeq2SeqLM
parser.add_argument("--dataset", default="wmt/wmt16")  # hub name or local folder
parser.add_argument("--source-key", default="en")  # the key of translation dicts to translate from
parser.add_argument("--target-key", default="de")  # ... and to
parser.add_argument("--output-dir", default="runs/translation")
parser.add_argument("--epochs", type=float, default=1)
parser.add_argument("--max-steps", type=int)  # overrides --epochs
parser.add_argument("--batch-size", type=int, default=16)  # per device
parser.add_argument("--learning-rate", type=float, default=5e-5)
parser.add_argument("--num-beams", type=int, default=4)  # for the final evaluation's generation
parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
parser.add_argument("--resume", action="store_true")  # continue the interrupted run in --output-dir
parser.add_argument("--overwrite", action="store_true")  # start over in an --output-dir that holds a run
args = parser.parse_args()

# Load
train, held_out = load_splits(args.dataset)
zoo = taskzoo.load("translation", model=args.model, source_key=args.source_key, target_key=args.target_key)

# Fine-tune
result = zoo.finetune(train, eval=held_out, output_dir=args.output_dir, epochs=args.epochs,
                      max_steps=args.max_steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                      mixed_precision=args.mixed_precision, warmup_ratio=0.05,
                      resume_from="latest" if args.resume else None, overwrite=args.overwrite)

# Evaluate and save
metrics = zoo.evaluate(held_out) if held_out is not None else {}
zoo.save(f"{args.output_dir}/final")
print(json.dumps({"recipe": "translation", "model": args.model, "dataset": args.dataset,
                  "steps": result.steps, "metrics": metrics}))
