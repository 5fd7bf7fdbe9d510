"""Fine-tune DETR on CPPE-5 (medical protective equipment, 5 classes) and report COCO mAP.

    accelerate launch recipes/object_detection.py --output-dir runs/cppe5     # 1 or more GPUs
    python recipes/object_detection.py --max-steps 20                          # a quick CPU try

The default DETR's ResNet-50 backbone is a timm model: pip install timm.
--dataset takes a hub name (image + objects = {bbox: COCO xywh, category}) or a local folder with train.json and
validation.json in COCO format (images beside them, or in images/).
"""

import argparse
import json

import taskzoo
from _common import load_splits

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default="facebook/detr-resnet-50")  # any AutoModelForObjectDetection
parser.add_argument("--dataset", default="rishitdagli/cppe-5")  # hub name or local folder
parser.add_argument("--output-dir", default="runs/object-detection")
parser.add_argument("--epochs", type=float, default=30)  # DETR converges slowly
parser.add_argument("--max-steps", type=int)  # overrides --epochs
parser.add_argument("--batch-size", type=int, default=8)  # per device
parser.add_argument("--learning-rate", type=float, default=5e-5)  # transformers' DETR fine-tuning guide
parser.add_argument("--weight-decay", type=float, default=1e-4)  # DETR's
parser.add_argument("--max-grad-norm", type=float, default=0.1)  # DETR's
parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
parser.add_argument("--strategy", default="full", choices=["full", "freeze", "lora"])
parser.add_argument("--resume", action="store_true")  # continue the interrupted run in --output-dir
parser.add_argument("--overwrite", action="store_true")  # start over in an --output-dir that holds a run
args = parser.parse_args()

# Load (cppe-5 has train and test splits: the test split is held out)
train, held_out = load_splits(args.dataset)
zoo = taskzoo.load("object-detection", model=args.model)

# Fine-tune: a new class head for the dataset's categories, their names kept in the saved config
result = zoo.finetune(train, eval=held_out, output_dir=args.output_dir, epochs=args.epochs,
                      max_steps=args.max_steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                      weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm,
                      mixed_precision=args.mixed_precision, strategy=args.strategy, warmup_ratio=0.05,
                      resume_from="latest" if args.resume else None, overwrite=args.overwrite)

# Evaluate (the last evaluation scored the final model) and save
zoo.save(f"{args.output_dir}/final")
print(json.dumps({"recipe": "object-detection", "model": args.model, "dataset": args.dataset,
                  "steps": result.steps, "metrics": result.final_metrics}))
