"""image-classification: AutoModelForImageClassification (ViT, ConvNeXT, ResNet, Swin, DINOv2, ...).

Inputs are PIL images, file paths or numpy arrays of any size and mode (grayscale, RGBA and palette images
become RGB). Predict gives ``[{"label", "score"}]``, the ``top_k`` best labels (5 by default, as
transformers' pipeline). Fine-tuning onto another label set builds a new head of the right size and keeps
the label names in the saved config.

Images are preprocessed by the checkpoint's PIL image processor: the "fast" ones need torchvision.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image as ImageFeature

from taskzoo import data as data_utils, heads, metrics, strategies
from taskzoo.drawing import visualize
from taskzoo.errors import DataError
from taskzoo.models import load_image_processor
from taskzoo.task import Task

SPLIT_NAMES = ("train", *data_utils.EVAL_SPLIT_NAMES)


class ImageClassification(Task):
    name = "image-classification"
    primary_metric = "accuracy"
    modality = "image"
    model_needs = "an image classification model with an image processor (ViT, ConvNeXT, ResNet, ...)"
    input_type = "image"
    playground_form = {"fields": [{"id": "file", "type": "image", "label": "Image file", "to": "inputs"},
                                  {"id": "top-k", "type": "number", "label": "Top labels", "value": 5,
                                   "to": "parameters.top_k"}], "output": "labels"}
    required_columns = ("image", "label")
    default_batch_size = 32
    # Label names for the head (their order gives the ids); needed for a stream, which cannot be scanned.
    finetune_options = {**Task.finetune_options, "labels": None}
    demo_config = dict(train_size=256, eval_size=64, epochs=4, learning_rate=3e-3, batch_size=16)

    # With a frozen body, the classifier's input can be cached (strategy="freeze"): a one-module head.
    cached_head = property(lambda self: strategies.single_head(self.model))

    @classmethod
    def from_pretrained(cls, path, device=None, trust_remote_code=False, **model_kwargs):
        from transformers import AutoModelForImageClassification

        processor = load_image_processor(path, trust_remote_code)
        model, info = AutoModelForImageClassification.from_pretrained(
            path, trust_remote_code=trust_remote_code, output_loading_info=True, **model_kwargs)
        return cls(model, processor, new_weights=info["missing_keys"], source=str(path), device=device)

    @classmethod
    def from_exported(cls, path, sessions, trust_remote_code=False):
        from taskzoo.export import exported_model

        model = exported_model(path, sessions, trust_remote_code)
        return cls(model, load_image_processor(path, trust_remote_code), source=str(path), device="cpu")

    def export_graphs(self):
        """One graph: pixel values (at the processor's size) -> logits; the head stays fp32 in int8."""
        from PIL import Image

        from taskzoo.export import Graph
        from taskzoo.export.optimizing import fusions_for

        model = strategies.exportable(self.model)  # adapters merged: one plain graph
        pixels = self._pixels([Image.new("RGB", (64, 48), (90, 120, 150)), Image.new("RGB", (40, 40))])
        return [Graph("model", model, {"pixel_values": pixels}, ["logits"], {"pixel_values": {0: "batch"}},
                      keep_fp32=("classifier",), **fusions_for(model.config))]

    @property
    def labels(self) -> list[str]:
        return heads.model_labels(self.model)

    # ----------------------------------------------------------------------------------------- data
    def read_path(self, path):
        """A folder with one sub-folder of images per class (or train/ validation/ split folders holding
        those), an image folder with metadata.csv/jsonl (file_name, label), or a CSV/JSONL table of image
        paths (relative to the table's folder) and labels."""
        path = Path(path)
        if not path.is_dir() or any((path / name).exists() for name in data_utils.METADATA_FILES):
            return data_utils.read_metadata_folder(path, "image")
        folders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
        if folders and all(p.name in SPLIT_NAMES for p in folders):
            return DatasetDict({p.name: self.read_path(p) for p in folders})
        if not folders:
            raise DataError(f"Image folder {path} has no class sub-folders (one folder of images per class), "
                            f"no split folders ({', '.join(SPLIT_NAMES[:3])}) and no metadata.csv/jsonl.")
        return data_utils.read_class_folders(path)

    def prepare_for_training(self, dataset) -> None:
        from transformers import AutoModelForImageClassification

        names = heads.names_for_training(dataset, "label", self.labels, self.head_trained,
                                         self.training_options.get("labels"))
        if names is not None:  # a new label set: a fresh head of the right size, the names kept
            self.model = heads.with_new_head(self.model, AutoModelForImageClassification, names).to(self.device)
            self.head_trained = True

    def prepare(self, dataset, training: bool):
        dataset = data_utils.cast_images(dataset, "image")
        return data_utils.encode_labels(dataset, "label", {name: i for i, name in enumerate(self.labels)})

    def _pixels(self, images: list) -> torch.Tensor:
        return self.processor(images=[data_utils.load_image(image) for image in images],
                              return_tensors="pt")["pixel_values"]

    def collate(self, examples: list[dict]) -> dict:
        return {"pixel_values": self._pixels([row["image"] for row in examples]),
                "labels": torch.tensor([row["label"] for row in examples])}

    # ------------------------------------------------------------------------------------- training
    def training_step(self, model, batch):
        output = model(pixel_values=batch["pixel_values"], labels=batch["labels"])
        return {"loss": output.loss, "output": output.logits}

    def eval_step(self, model, batch):
        """Per sample the ids of the 5 best classes (best first): enough for accuracy and top-5, and
        memory stays small however many classes the model has."""
        logits = model(pixel_values=batch["pixel_values"]).logits
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        return top.tolist(), batch["labels"].tolist()

    def compute_metrics(self, predictions, references):
        best = [ranked[0] for ranked in predictions]
        scores = {"accuracy": metrics.accuracy(best, references), "macro_f1": metrics.macro_f1(best, references)}
        if self.model.config.num_labels >= 5:
            scores["top5_accuracy"] = metrics.top_k_accuracy(predictions, references, k=5)
        return scores

    def metric_inputs(self, predictions, references):
        """Your metrics get class ids: the best class per image and the reference (``self.labels[i]`` names them)."""
        return [ranked[0] for ranked in predictions], references

    # -------------------------------------------------------------------------------------- predict
    def input_of(self, row):
        return row["image"]

    def draw(self, input, output):
        return visualize(input, output)  # the image, its top labels with score bars below

    def preprocess_batch(self, inputs):
        return self._pixels(inputs)

    def predict_batch(self, pixels, top_k: int = 5):
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise ValueError(f"top_k must be a positive integer; got {top_k!r}.")
        logits = self.model(pixel_values=pixels.to(self.device)).logits.float()
        scores = heads.scores_from_logits(logits, self.model.config)
        values, indices = scores.topk(min(top_k, scores.shape[-1]), dim=-1)
        labels = self.labels
        return [[{"label": labels[i], "score": v} for v, i in zip(row_values, row_indices)]
                for row_values, row_indices in zip(values.tolist(), indices.tolist())]

    # ---------------------------------------------------------------------------------- testing kit
    # Each class is a shape in its own colour: a tiny model learns it in a few dozen steps (shape alone,
    # with random colours, did not learn in minutes).
    SHAPES = {"square": (220, 40, 40), "circle": (40, 200, 40), "triangle": (40, 60, 230), "cross": (230, 210, 30)}

    @staticmethod
    def tiny_model(path: str | os.PathLike, family: str = "vit", labels: list[str] | None = None) -> Path:
        """A tiny random ViT (``family="vit"``) or ConvNeXT (``"convnext"``) for 32 px images and the toy
        labels (or ``labels``), with its PIL image processor, saved at ``path``."""
        from transformers import (
            ConvNextConfig,
            ConvNextForImageClassification,
            ConvNextImageProcessorPil,
            ViTConfig,
            ViTForImageClassification,
            ViTImageProcessorPil,
        )

        labels = labels or list(ImageClassification.SHAPES)
        names = dict(num_labels=len(labels), id2label=dict(enumerate(labels)),
                     label2id={label: i for i, label in enumerate(labels)})
        torch.manual_seed(0)
        if family == "vit":  # sizes as transformers' ViT model tests
            model = ViTForImageClassification(ViTConfig(image_size=32, patch_size=4, hidden_size=32,
                                                        num_hidden_layers=2, num_attention_heads=2,
                                                        intermediate_size=64, **names))
            processor = ViTImageProcessorPil(size={"height": 32, "width": 32})
        elif family == "convnext":
            model = ConvNextForImageClassification(ConvNextConfig(num_stages=2, hidden_sizes=[16, 32], depths=[1, 1],
                                                                  image_size=32, **names))
            # crop_pct=1: a plain resize, no centre crop that could cut the shape off.
            processor = ConvNextImageProcessorPil(size={"shortest_edge": 32}, crop_pct=1.0)
        else:
            raise ValueError(f"family must be 'vit' or 'convnext'; got {family!r}.")
        model.save_pretrained(path)
        processor.save_pretrained(path)
        return Path(path)

    @staticmethod
    def toy_dataset(n: int = 64, seed: int = 0) -> Dataset:
        """32 px images of one coloured shape on a noisy grey background, placed and sized at random;
        balanced ClassLabel ``label`` (square, circle, triangle, cross)."""
        from taskzoo.testing import draw_shapes

        names = list(ImageClassification.SHAPES)
        rng = np.random.default_rng(seed)
        images, labels = [], []
        for i in range(n):
            label = names[(i + seed) % len(names)]
            images.append(draw_shapes(rng, 32, [(label, ImageClassification.SHAPES[label])])[0])
            labels.append(label)
        features = Features({"image": ImageFeature(), "label": ClassLabel(names=names)})
        return Dataset.from_dict({"image": images, "label": labels}, features=features)

