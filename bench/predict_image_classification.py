"""Benchmark: taskzoo predict vs transformers.pipeline, image-classification with a ViT-Base/16 classifier.

ViT-Base/16 at 224 px (the registry's default architecture, google/vit-base-patch16-224) with seeded random
weights and a 10-label head, as a fine-tuned classifier would have: the hub is out of reach here, and speed
does not depend on the weights. Inputs are JPEG files of mixed sizes (200-1000 px), so both sides decode,
resize and normalise. Prints each side's time, the ratios, peak memory, how many top labels agree, and the
achieved GFLOP/s beside this machine's measured matmul peak in the same precision (bench/common.py).

    python bench/predict_image_classification.py [--images 48]
"""

import argparse
import tempfile
from pathlib import Path

import torch
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil, pipeline

import taskzoo
from common import compare_with_pipeline, cpu_line, flops_per_input, photo_files
from taskzoo.demo import quiet_libraries

parser = argparse.ArgumentParser()
parser.add_argument("--images", type=int, default=48)
args = parser.parse_args()
print(cpu_line(), flush=True)  # the figures below depend on it (bf16 and int8 above all)
quiet_libraries()


folder = Path(tempfile.mkdtemp(prefix="bench-vit-"))
names = [f"class_{i}" for i in range(10)]
torch.manual_seed(0)
ViTForImageClassification(ViTConfig(num_labels=10, id2label=dict(enumerate(names)),
                                     label2id={n: i for i, n in enumerate(names)})).save_pretrained(folder)
ViTImageProcessorPil(size={"height": 224, "width": 224}).save_pretrained(folder)
images = photo_files(args.images, folder)

classifier = pipeline("image-classification", model=str(folder), device="cpu")
zoo = taskzoo.load("image-classification", model=folder, device="cpu")


def agreement(ours, theirs) -> str:
    """Share of equal top labels; where they differ, the pipeline's own margin between its first two."""
    differ = [b[0]["score"] - b[1]["score"] for a, b in zip(ours, theirs) if a[0]["label"] != b[0]["label"]]
    difference = max(abs(a[0]["score"] - b[0]["score"]) for a, b in zip(ours, theirs))
    found = f"{1 - len(differ) / len(theirs):.1%} top labels equal, top scores within {difference:.1e}"
    return found + (f"; the pipeline's top-2 margin where they differ: at most {max(differ):.1e}" if differ else "")


compare_with_pipeline(
    f"{len(images)} JPEG images, ViT-Base/16 224 px, 10 labels",
    lambda batch_size: classifier(images, batch_size=batch_size),
    lambda **options: zoo.predict(images, batch_size=8, progress=False, **options),
    agreement, batch_sizes=(4, 8, 16), repeat=3,
    flops_per_input=flops_per_input(zoo.model, [{"pixel_values": torch.zeros(1, 3, 224, 224)}]), inputs=len(images),
    variants=[("batch_size=8, fp32", {}), ("batch_size=8, bf16", {"mixed_precision": "bf16"}),
              ("batch_size=8, fp32, compile=True", {"compile": True}),
              ("batch_size=8, bf16, compile=True", {"mixed_precision": "bf16", "compile": True}),
              ("batch_size=8, bf16, num_workers=1", {"mixed_precision": "bf16", "num_workers": 1})])
