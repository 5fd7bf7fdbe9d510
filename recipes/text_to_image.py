"""Fine-tune Stable Diffusion with LoRA on a captioned image set and report the held-out denoising loss.

    accelerate launch recipes/text_to_image.py --output-dir runs/pokemon-lora --mixed-precision fp16
    python recipes/text_to_image.py --max-steps 20

--dataset takes a hub name (image and text columns) or a local folder with train/ and validation/ image
folders, each with a metadata.jsonl ({"file_name": ..., "text": ...} per line). Validation prompts are
rendered into output_dir/validation-step-*.png at each evaluation.
"""

import argparse
import json

import taskzoo
from _common import load_splits

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default="stable-diffusion-v1-5/stable-diffusion-v1-5")  # a diffusers pipeline
parser.add_argument("--dataset", default="svjack/pokemon-blip-captions-en-zh")  # hub name or local folder
parser.add_argument("--text-column", default="text")  # the caption column
parser.add_argument("--output-dir", default="runs/text-to-image")
parser.add_argument("--strategy", default="lora", choices=["lora", "full"])
parser.add_argument("--resolution", type=int)  # default: the model's native size (512 for SD 1.5)
parser.add_argument("--epochs", type=float, default=10)
parser.add_argument("--max-steps", type=int)  # overrides --epochs
parser.add_argument("--batch-size", type=int, default=1)  # per device
parser.add_argument("--learning-rate", type=float, default=1e-4)  # LoRA; full fine-tuning wants ~1e-5
parser.add_argument("--snr-gamma", type=float, default=5.0)  # min-SNR weighting; 0 turns it off
parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
parser.add_argument("--resume", action="store_true")  # continue the interrupted run in --output-dir
parser.add_argument("--overwrite", action="store_true")  # start over in an --output-dir that holds a run
args = parser.parse_args()

# Load
train, held_out = load_splits(args.dataset)
columns = {args.text_column: "text"} if args.text_column != "text" else None
zoo = taskzoo.load("text-to-image", model=args.model)

# Fine-tune
result = zoo.finetune(train, eval=held_out, columns=columns, output_dir=args.output_dir, epochs=args.epochs,
                      max_steps=args.max_steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                      strategy=args.strategy, resolution=args.resolution, snr_gamma=args.snr_gamma or None,
                      mixed_precision=args.mixed_precision, cache_latents=True,
                      resume_from="latest" if args.resume else None, overwrite=args.overwrite)

# Evaluate and save (LoRA: the adapter alone, which diffusers' load_lora_weights reads)
metrics = zoo.evaluate(held_out, columns=columns) if held_out is not None else {}
zoo.save(f"{args.output_dir}/final")
print(json.dumps({"recipe": "text-to-image", "model": args.model, "dataset": args.dataset,
                  "steps": result.steps, "metrics": metrics}))
