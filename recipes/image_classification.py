"""Fine-tune a ViT image classifier on beans (bean-leaf diseases, 3 classes) and report accuracy.

    accelerate launch recipes/image_classification.py --output-dir runs/beans     # 1 or more GPUs
    python recipes/image_classification.py --max-steps 20                         # a quick CPU try

--dataset takes a hub name or a local folder: one sub-folder of images per class, train/ and validation/
folders holding such class folders, or train.csv / validation.csv with image paths and labels.
"""

import argparse
import json

import taskzoo
from _common import load_splits

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default="google/vit-base-patch16-224-in21k")  # any AutoModelForImageClassification
parser.add_argument("--dataset", default="AI-Lab-Makerere/beans")  # hub name or local folder
parser.add_argument("--image-column")  # your image column, when it is not called image
parser.add_argument("--label-column")  # your label column, when it is not called label
parser.add_argument("--output-dir", default="runs/image-classification")
parser.add_argument("--epochs", type=float, default=3)
parser.add_argument("--max-steps", type=int)  # overrides --epochs
parser.add_argument("--batch-size", type=int, default=32)  # per device
parser.add_argument("--learning-rate", type=float, default=2e-4)  # a new head on a pretrained ViT body
parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
parser.add_argument("--strategy", default="full", choices=["full", "freeze", "lora"])  # freeze: cached features
parser.add_argument("--resume", action="store_true")  # continue the interrupted run in --output-dir
parser.add_argument("--overwrite", action="store_true")  # start over in an --output-dir that holds a run
args = parser.parse_args()

# Load
train, held_out = load_splits(args.dataset, hub_columns={"labels": "label"})  # beans calls its labels labels
columns = {args.image_column: "image", args.label_column: "label"}
columns = {k: v for k, v in columns.items() if k and k != v}
zoo = taskzoo.load("image-classification", model=args.model)

# Fine-tune: the head is rebuilt for the dataset's classes, and their names are kept in the saved config
result = zoo.finetune(train, eval=held_out, columns=columns, output_dir=args.output_dir, epochs=args.epochs,
                      max_steps=args.max_steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                      mixed_precision=args.mixed_precision, strategy=args.strategy, warmup_ratio=0.1,
                      resume_from="latest" if args.resume else None, overwrite=args.overwrite)

# Evaluate (the last evaluation scored the final model) and save
zoo.save(f"{args.output_dir}/final")
print(json.dumps({"recipe": "image-classification", "model": args.model, "dataset": args.dataset,
                  "steps": result.steps, "labels": zoo.labels, "metrics": result.final_metrics}))
