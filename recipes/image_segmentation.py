"""Fine-tune SegFormer on sidewalk-semantic (35 street-scene classes) and report mean IoU.

    accelerate launch recipes/image_segmentation.py --output-dir runs/sidewalk      # 1 or more GPUs
    python recipes/image_segmentation.py --max-steps 20                            # a quick CPU try

--dataset takes a hub name or a local folder with images/ and masks/ (files matched by name stem), or
train/ and validation/ folders holding those. Class names come from the dataset's id2label.json when it
has one (sidewalk-semantic does; a local folder may too), else the model's labels are kept.
"""

import argparse
import json
from pathlib import Path

import taskzoo
from _common import load_splits

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default="nvidia/mit-b0")  # a SegFormer encoder; any AutoModelForSemanticSegmentation
parser.add_argument("--dataset", default="segments/sidewalk-semantic")  # hub name or local folder
parser.add_argument("--image-column")  # your image column, when it is not called image
parser.add_argument("--mask-column")  # your mask column (a class id per pixel), when it is not called mask
parser.add_argument("--reduce-labels", action="store_true")  # 0 means "other": ignore it, shift the rest down
parser.add_argument("--validation-size", type=float, default=0.1)  # held out when the dataset has one split
parser.add_argument("--output-dir", default="runs/image-segmentation")
parser.add_argument("--epochs", type=float, default=10)
parser.add_argument("--max-steps", type=int)  # overrides --epochs
parser.add_argument("--batch-size", type=int, default=8)  # per device
parser.add_argument("--learning-rate", type=float, default=6e-5)  # SegFormer's fine-tuning rate
parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
parser.add_argument("--strategy", default="full", choices=["full", "freeze", "lora"])
parser.add_argument("--resume", action="store_true")  # continue the interrupted run in --output-dir
parser.add_argument("--overwrite", action="store_true")  # start over in an --output-dir that holds a run
args = parser.parse_args()


def class_names(dataset: str):
    """The names in the dataset's id2label.json ({"0": "unlabeled", ...}), or None when it has none."""
    path = Path(dataset) / "id2label.json"
    if not Path(dataset).exists():
        from huggingface_hub import hf_hub_download

        try:
            path = Path(hf_hub_download(dataset, "id2label.json", repo_type="dataset"))
        except Exception:  # noqa: BLE001 - no such file (or offline): keep the model's labels
            return None
    if not path.is_file():
        return None
    id2label = json.loads(path.read_text())
    return [id2label[str(i)] for i in range(len(id2label))]


# Load
train, held_out = load_splits(args.dataset, hub_columns={"pixel_values": "image", "label": "mask"})  # sidewalk's
if held_out is None and not isinstance(train, str):  # a hub dataset with a train split only (sidewalk)
    splits = train.train_test_split(test_size=args.validation_size, seed=0)
    train, held_out = splits["train"], splits["test"]
columns = {args.image_column: "image", args.mask_column: "mask"}
columns = {k: v for k, v in columns.items() if k and k != v}
zoo = taskzoo.load("image-segmentation", model=args.model)

# Fine-tune: labels= builds a decode head for the dataset's classes
result = zoo.finetune(train, eval=held_out, columns=columns, output_dir=args.output_dir, epochs=args.epochs,
                      max_steps=args.max_steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                      mixed_precision=args.mixed_precision, strategy=args.strategy, warmup_ratio=0.05,
                      labels=class_names(args.dataset), reduce_labels=args.reduce_labels,
                      resume_from="latest" if args.resume else None, overwrite=args.overwrite)

# Evaluate (the last evaluation scored the final model) and save
zoo.save(f"{args.output_dir}/final")
metrics = {k: v for k, v in result.final_metrics.items() if not k.startswith("iou_")}  # per-class IoU: log.jsonl
print(json.dumps({"recipe": "image-segmentation", "model": args.model, "dataset": args.dataset,
                  "steps": result.steps, "metrics": metrics}))
