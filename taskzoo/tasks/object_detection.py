"""object-detection (alias detection): AutoModelForObjectDetection (DETR, Conditional and Deformable DETR,
YOLOS, RT-DETR, ...), with the PIL image processors (the default ones need torchvision).

Predict: an image -> ``[{"label", "score", "box": {"xmin", "ymin", "xmax", "ymax"}}]`` above ``threshold``.
Data: ``image`` and ``objects`` = {``bbox``, ``category``} per image (as the cppe-5 dataset), a COCO json with
its images, or an image folder whose metadata.jsonl rows hold ``objects``. Metric: COCO mAP (pycocotools).

Box conventions, since every library picks another:
- data (COCO json, HF datasets): ``[x, y, width, height]`` in the image's pixels, (x, y) the top-left corner;
- predict, eval_step and metrics.coco_map: corners ``xmin, ymin, xmax, ymax`` in the original image's pixels;
- model targets and outputs: ``[cx, cy, w, h]`` as fractions of the image *before padding*, as the original
  DETR and the checkpoints on the hub were trained (transformers' processors would re-normalise targets to the
  padded batch). A fraction of the original image is the same fraction of its resized copy, so targets are
  computed from the original pixels and outputs scaled back by the original size: boxes survive resizing and
  padding exactly, whichever images share a batch.
"""

from __future__ import annotations

import inspect
import math
import os
import warnings
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict, Image, List, Value

from taskzoo import data as data_utils, heads, metrics, strategies, streaming
from taskzoo.detection_data import (
    category_feature,
    detection_features,
    label_names,
    looks_like_coco,
    read_coco,
    unpack_objects,
)
from taskzoo.drawing import visualize
from taskzoo.errors import DataError, TaskzooWarning
from taskzoo.models import load_image_processor
from taskzoo.task import Task

OBJECTS = {"bbox": List(List(Value("float64"))), "category": List(Value("int64"))}  # after prepare()


def encode(processor, images: list, objects: list[dict] | None = None, pixel_mask: bool = True) -> dict:
    """PIL images (and their objects: COCO xywh pixels, category ids) -> model inputs (and ``labels``)."""
    encoded = processor(images=images, return_tensors="pt")
    batch = {"pixel_values": encoded["pixel_values"]}
    if pixel_mask and "pixel_mask" in encoded:  # where padding starts, for the models that read it
        batch["pixel_mask"] = encoded["pixel_mask"]
    if objects is not None:
        batch["labels"] = []
        for image, item in zip(images, objects):
            boxes = torch.tensor(item["bbox"], dtype=torch.float64).reshape(-1, 4)
            boxes[:, :2] += boxes[:, 2:] / 2  # top-left corner -> centre
            boxes /= torch.tensor([image.width, image.height] * 2, dtype=torch.float64)
            batch["labels"].append({"class_labels": torch.tensor(item["category"], dtype=torch.long).reshape(-1),
                                    "boxes": boxes.float()})
    return batch


def decode(processor, outputs, sizes: list[tuple[int, int]], threshold: float) -> list[dict]:
    """Model outputs -> per image ``{"boxes": corners in original pixels, clipped to the image, "scores",
    "labels"}`` (tensors); ``sizes`` are the original (height, width)."""
    outputs["logits"], outputs["pred_boxes"] = outputs.logits.float(), outputs.pred_boxes.float()  # bf16 autocast
    results = processor.post_process_object_detection(outputs, threshold=threshold, target_sizes=sizes)
    for result, (height, width) in zip(results, sizes):
        result["boxes"][:, 0::2] = result["boxes"][:, 0::2].clamp(0, width)
        result["boxes"][:, 1::2] = result["boxes"][:, 1::2].clamp(0, height)
    return results


class ObjectDetection(Task):
    name = "object-detection"
    primary_metric = "map"
    modality = "image"
    model_needs = "an object detection model with an image processor (DETR, RT-DETR, YOLOS, ...)"
    input_type = "image"
    # The demo shows map_50 ("found it": a box overlapping the true one by half); map averages IoU thresholds 0.5
    # to 0.95 and reads badly on a toy run.
    shown_metric = "map_50"
    playground_form = {"fields": [{"id": "file", "type": "image", "label": "Image file", "to": "inputs"},
                                  {"id": "threshold", "type": "number", "label": "Score threshold", "value": 0.5,
                                   "step": 0.05, "to": "parameters.threshold"}], "output": "boxes"}
    required_columns = ("image", "objects")
    default_batch_size = 8
    default_learning_rate = 1e-4  # DETR's
    # Category names for the head (their order gives the ids); needed for a stream, which cannot be scanned.
    finetune_options = {**Task.finetune_options, "labels": None}
    # The tiny RT-DETR goes from map_50 ~0 to 0.77-0.90 on held-out toy data in 150 steps over training seeds
    # (docs/tasks/object-detection.md, bench/detection_seeds.py). Its initialisation is what makes that fast (see
    # testing/detection.py). Warm-up, then cosine decay: the boxes settle earlier than with a constant rate (at
    # step 100, map_50 0.79-0.85 against 0.59-0.80, seeds 0-2), which ended about as well (0.83-0.89 at step 150).
    demo_config = dict(train_size=200, eval_size=48, max_steps=150, batch_size=8, learning_rate=2e-3,
                       scheduler="cosine", warmup_steps=15, eval_every=50)

    @classmethod
    def from_pretrained(cls, path, device=None, trust_remote_code=False, **model_kwargs):
        from transformers import AutoModelForObjectDetection

        processor = load_image_processor(path, trust_remote_code)
        model, info = AutoModelForObjectDetection.from_pretrained(
            path, trust_remote_code=trust_remote_code, output_loading_info=True, **model_kwargs)
        return cls(model, processor, new_weights=info["missing_keys"], source=str(path), device=device)

    @classmethod
    def from_exported(cls, path, sessions, trust_remote_code=False):
        from taskzoo.export import exported_model

        model = exported_model(path, sessions, trust_remote_code)
        return cls(model, load_image_processor(path, trust_remote_code), source=str(path), device="cpu")

    def export_graphs(self):
        """One graph: pixel values (and mask) -> class logits and boxes; thresholds, box scaling to each image and
        the labels stay in Python (the processor's post-processing). Height and width vary where the processor
        keeps each image's aspect ratio (DETR), and are the processor's fixed size elsewhere (RT-DETR)."""
        from PIL import Image

        from taskzoo.export import Graph

        model = strategies.exportable(self.model, merged=True)
        inputs = encode(self.processor, [Image.new("RGB", (64, 48), (90, 120, 150)), Image.new("RGB", (48, 64))],
                        pixel_mask=self.reads_mask)
        size = getattr(self.processor, "size", None)
        fixed = bool(getattr(size, "height", None) or (isinstance(size, dict) and size.get("height")))
        axes = {"pixel_values": {0: "batch", **({} if fixed else {2: "height", 3: "width"})},
                "pixel_mask": {0: "batch", **({} if fixed else {1: "height", 2: "width"})}}
        return [Graph("model", model, inputs, ["logits", "pred_boxes"], {name: axes[name] for name in inputs},
                      keep_fp32=("class_embed", "bbox_embed"))]

    @property
    def labels(self) -> list[str]:
        return heads.model_labels(self.model)

    # RT-DETR keeps its prediction heads inside the model: the decoder's per-layer class and box heads, the
    # encoder's query-selection heads and the denoising queries' class embedding (those that exist).
    NESTED_HEADS = ("model.enc_score_head", "model.enc_bbox_head", "model.decoder.class_embed",
                    "model.decoder.bbox_embed", "model.denoising_class_embed")

    def head_modules(self) -> list[str]:
        """What strategy="freeze" trains (and LoRA trains in full): the heads at the top (DETR's classifier and
        box predictor) or RT-DETR's nested ones."""
        modules = dict(self.model.named_modules())
        nested = []
        for name in filter(modules.__contains__, self.NESTED_HEADS):
            if isinstance(modules[name], torch.nn.ModuleList):  # one per decoder layer: peft wraps each one
                nested += [f"{name}.{index}" for index in range(len(modules[name]))]
            elif any(True for _ in modules[name].parameters()):
                nested.append(name)
        return nested or super().head_modules()

    @property
    def reads_mask(self) -> bool:
        """DETR-like models are told where padding starts; others (YOLOS) see the padded image."""
        if self.exported:  # the graph's inputs tell
            return "pixel_mask" in self.model.input_names
        model = self.model.get_base_model() if strategies.is_peft(self.model) else self.model
        return "pixel_mask" in inspect.signature(model.forward).parameters

    # ----------------------------------------------------------------------------------------- data
    def read_path(self, path):
        """A COCO json; a folder of them (train.json, validation.json: one split each) or of split folders
        holding one each (Roboflow's train/_annotations.coco.json); or an image folder with metadata.jsonl rows
        ``{"file_name", "objects": {"bbox": [[x, y, w, h]], "category": [...]}}``."""
        path = Path(path)
        if path.is_file() and path.suffix.lower() == ".json":
            return read_coco(path) if looks_like_coco(path) else data_utils.read_table(path)
        if path.is_dir():
            here = [file for file in sorted(path.glob("*.json")) if looks_like_coco(file)]
            if here:
                return read_coco(here[0]) if len(here) == 1 else DatasetDict({f.stem: read_coco(f) for f in here})
            splits = {sub.name: [f for f in sorted(sub.glob("*.json")) if looks_like_coco(f)]
                      for sub in sorted(path.iterdir()) if sub.is_dir()}
            if any(len(files) == 1 for files in splits.values()):
                return DatasetDict({name: read_coco(files[0]) for name, files in splits.items() if len(files) == 1})
        example = '{"file_name": "0001.jpg", "objects": {"bbox": [[10, 20, 30, 40]], "category": ["cat"]}}'
        return data_utils.read_metadata_folder(path, "image", example=example)

    def prepare_for_training(self, dataset) -> None:
        given = self.training_options.get("labels")
        if given is None and streaming.is_stream(dataset) and not hasattr(category_feature(dataset.features or {}),
                                                                          "names"):
            if self.head_trained:
                return  # keep the model's labels; a category outside them is refused as the stream is read
            raise DataError("The model has no trained detection head, and a stream cannot be scanned for its "
                            "categories: pass their names with labels=[...].")
        names = [str(name) for name in given] if given is not None else label_names(dataset)
        if names is None:  # integer categories: keep the model's names when they fit
            count = max((c for objects in dataset["objects"] for c in unpack_objects(objects)[1]), default=-1) + 1
            if self.head_trained and count <= len(self.labels):
                return
            names = [f"LABEL_{i}" for i in range(max(count, 1))]
        elif self.head_trained and set(names) <= set(self.labels):
            return  # a subset of the model's labels (COCO classes on a COCO model, say): keep its trained head
        from transformers import AutoModelForObjectDetection

        self.model = heads.with_new_head(self.model, AutoModelForObjectDetection, names).to(self.device)
        self.head_trained = True

    def prepare(self, dataset, training: bool):
        """Check every box; clip those that cross the image border and drop those with no area left (one
        warning counting both); categories -> the model's label ids. Keeps the columns image and objects."""
        names, label2id = label_names(dataset), {name: i for i, name in enumerate(self.labels)}
        if isinstance(dataset.features["image"], Image):  # sizes come from the file headers; collate decodes
            dataset = dataset.cast_column("image", Image(decode=False))
        cleaned, unknown, total, clipped, dropped, first = [], set(), 0, 0, 0, None
        for row, example in enumerate(dataset.select_columns(["image", "objects"])):
            width, height = data_utils.image_size(example["image"])
            kept = {"bbox": [], "category": []}
            for box, category in zip(*unpack_objects(example["objects"], row)):
                total, inside = total + 1, _clip(box, width, height, row)
                if inside is None:
                    dropped += 1
                    first = first or f"row {row}: bbox {list(box)} in a {width}x{height} image"
                    continue
                clipped += inside != list(box)
                label = names[category] if names and not isinstance(category, str) else category  # ClassLabel
                if not (label in label2id if isinstance(label, str) else 0 <= label < len(label2id)):
                    unknown.add(str(label))
                    continue
                kept["bbox"].append(inside)
                kept["category"].append(label2id[label] if isinstance(label, str) else int(label))
            cleaned.append(kept)
        if unknown:
            raise DataError(f"objects.category has labels the model does not know: {sorted(unknown)[:10]}. "
                            f"The model's labels are {self.labels[:20]}.")
        if clipped or dropped:
            role = "training" if training else "evaluation"
            warnings.warn(f"{self.name}: of {total} boxes in the {role} data, {clipped} crossed the image border "
                          f"and were clipped to it, and {dropped} were dropped (zero or negative width or height, "
                          f"or wholly outside the image{'; first: ' + first if first else ''}). Boxes are COCO "
                          "[x, y, width, height] in pixels.", TaskzooWarning, stacklevel=3)
        return dataset.select_columns(["image"]).add_column("objects", cleaned, feature=OBJECTS)

    def collate(self, examples: list[dict]) -> dict:
        images = [data_utils.load_image(row["image"]) for row in examples]
        batch = encode(self.processor, images, [row["objects"] for row in examples], self.reads_mask)
        batch["sizes"] = [(image.height, image.width) for image in images]
        batch["targets"] = [{"boxes": [_corners(box) for box in row["objects"]["bbox"]],
                             "labels": row["objects"]["category"]} for row in examples]
        return batch

    # ------------------------------------------------------------------------------------- training
    def training_step(self, model, batch):
        inputs = {key: batch[key] for key in ("pixel_values", "pixel_mask") if key in batch}
        output = model(**inputs, labels=batch["labels"])
        return {"loss": output.loss, "output": output.logits}

    def eval_step(self, model, batch):
        inputs = {key: batch[key] for key in ("pixel_values", "pixel_mask") if key in batch}
        # Every query counts for mAP, however low its score: threshold 0.
        results = decode(self.processor, model(**inputs), batch["sizes"], threshold=0.0)
        predictions = [{key: result[key].tolist() for key in ("boxes", "scores", "labels")} for result in results]
        return predictions, batch["targets"]

    def compute_metrics(self, predictions, references):
        return metrics.coco_map(predictions, references)

    def metric_inputs(self, predictions, references):
        """Your metrics get, per image, what predict() gives (every query, threshold 0), and the reference
        objects in the same form without a score: ``{"label": name, "box": {"xmin", "ymin", "xmax", "ymax"}}``."""
        labels = self.labels
        return ([_objects(labels, p["labels"], p["boxes"], p["scores"]) for p in predictions],
                [_objects(labels, r["labels"], r["boxes"]) for r in references])

    # -------------------------------------------------------------------------------------- predict
    def input_of(self, row):
        return row["image"]

    def draw(self, input, output):
        return visualize(input, output)  # boxes with "label score" tags

    def preprocess_batch(self, inputs):
        return [data_utils.load_image(item) for item in inputs]  # decoded, RGB

    def predict_batch(self, images, threshold: float = 0.5):
        if not (isinstance(threshold, (int, float)) and 0 <= threshold <= 1):
            raise ValueError(f"threshold must be a number in [0, 1]; got {threshold!r}.")
        if not self.reads_mask and len({image.size for image in images}) > 1:
            # A model that cannot tell padding from image would see its frame change: one image at a time.
            return [self.predict_batch([image], threshold)[0] for image in images]
        batch = encode(self.processor, images, pixel_mask=self.reads_mask)
        outputs = self.model(**{key: value.to(self.device) for key, value in batch.items()})
        return [_objects(self.labels, result["labels"].tolist(), result["boxes"].tolist(), result["scores"].tolist())
                for result in decode(self.processor, outputs, [(im.height, im.width) for im in images], threshold)]

    # ---------------------------------------------------------------------------------- testing kit
    @staticmethod
    def tiny_model(path: str | os.PathLike, family: str = "rt-detr") -> Path:
        """A tiny random detector for the toy labels (nothing pretrained, no timm), saved at ``path``:
        RT-DETR (``family="rt-detr"``, the default: it learns the toy boxes in 150 steps) or
        the original DETR (``family="detr"``)."""
        from taskzoo.testing import detection

        return detection.tiny_detector(Path(path), family)

    @staticmethod
    def toy_dataset(n: int = 64, seed: int = 0) -> Dataset:
        """64x64 noisy images with one or two filled rectangles, red or blue, that do not touch."""
        from taskzoo.testing import detection

        return detection.toy_rectangles(n, seed, detection_features(list(detection.TOY_COLOURS)))


# ------------------------------------------------------------------------------------------ data helpers
def _objects(labels: list[str], label_ids: list[int], boxes: list, scores: list | None = None) -> list[dict]:
    """Objects as predict() gives them: ``{"label", "score", "box": {"xmin", "ymin", "xmax", "ymax"}}`` (pixels,
    to 0.01), best first. Without ``scores`` (references): no score, in the given order."""
    found = [{"label": labels[label], **({} if scores is None else {"score": scores[i]}),
              "box": dict(zip(("xmin", "ymin", "xmax", "ymax"), (round(float(v), 2) for v in box)))}
             for i, (label, box) in enumerate(zip(label_ids, boxes))]
    return found if scores is None else sorted(found, key=lambda item: -item["score"])


def _corners(box) -> list[float]:
    x, y, width, height = box
    return [x, y, x + width, y + height]


def _clip(box, width: int, height: int, row: int) -> list[float] | None:
    """A COCO box clipped to the image, or None when no area is left (or there was none)."""
    if not (isinstance(box, (list, tuple)) and len(box) == 4
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)):
        raise DataError(f"Row {row}: objects.bbox holds {box!r}, not [x, y, width, height] (4 finite numbers, "
                        "COCO format, in pixels).")
    x0, y0, x1, y1 = _corners(box)
    x0, x1 = min(max(x0, 0), width), min(max(x1, 0), width)
    y0, y1 = min(max(y0, 0), height), min(max(y1, 0), height)
    return [x0, y0, x1 - x0, y1 - y0] if x1 > x0 and y1 > y0 else None
