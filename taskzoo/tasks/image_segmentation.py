"""image-segmentation (aliases semantic-segmentation, segmentation): AutoModelForSemanticSegmentation
(SegFormer, BEiT, DPT, MobileViT, UperNet, ...) and the universal-segmentation Mask2Former, MaskFormer and
OneFormer, whose specifics (mask and class targets, post-processing) live in universal_segmentation.py.

Predict gives one ``{"label", "score", "mask"}`` per class present, the mask a PIL "L" image of the input's
size (255 where the class is) and the score the class's mean probability over it; ``return_label_map=True``
gives the raw label map instead (a height x width array of class ids). Logits are upsampled to the input's
size before the argmax, as transformers' post_process_semantic_segmentation does (universal models go
through their processor's own).

Masks hold one class id per pixel; 255 is ignored by the loss and the metrics. ``reduce_labels=True`` is for
datasets whose 0 means "other" (ADE20k): 0 becomes 255 and every other id moves down by one.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset, DatasetDict, Features, Image as ImageFeature
from tqdm.auto import tqdm

from taskzoo import data as data_utils, heads, metrics, strategies
from taskzoo.drawing import visualize
from taskzoo.errors import DataError
from taskzoo.models import load_image_processor
from taskzoo.task import Task
from taskzoo.tasks import universal_segmentation as universal

IGNORE_INDEX = 255
MASK_COLUMNS = ("mask", "annotation", "label")  # accepted names of the mask column, in this order
MASK_FOLDERS = ("masks", "annotations")


def load_mask(value) -> np.ndarray:
    """A 2-D int64 array of class ids from a PIL image ("L", "P": palette indices are the ids, "I", "1";
    RGB only when grey), a path, image bytes (datasets' undecoded Image) or an array."""
    from PIL import Image

    source = "<array>"
    if isinstance(value, (Mapping, str, os.PathLike, io.BytesIO)):
        path = value.get("path") if isinstance(value, Mapping) else value
        source = str(path) if isinstance(path, (str, os.PathLike)) and path else "<mask bytes>"
        value = data_utils.open_image_file(value, "Mask")
    if isinstance(value, Image.Image):
        source = getattr(value, "filename", "") or source
        array = np.asarray(value)
        if value.mode in ("RGB", "RGBA", "LA"):
            channels = array[..., :-1] if value.mode == "LA" else array[..., :3]
            if not (channels == channels[..., :1]).all():
                raise DataError(f"Mask {source} is a colour image: a mask holds one class id per pixel ('L' or "
                                "'P' image, or a 2-D array). Map its colours to class ids first.")
            array = array[..., 0]
        value = array
    array = np.asarray(value)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise DataError(f"Mask {source} must be 2-D (height x width class ids); got shape {array.shape}.")
    if array.dtype.kind == "f" and np.isfinite(array).all() and (array == np.round(array)).all():
        array = array.astype(np.int64)
    if array.dtype.kind not in "iub":
        raise DataError(f"Mask {source} must hold integer class ids; got {array.dtype} values.")
    return array.astype(np.int64)


class ImageSegmentation(Task):
    name = "image-segmentation"
    primary_metric = "mean_iou"
    modality = "image"
    model_needs = "a semantic segmentation model with an image processor (SegFormer, BEiT, DPT, ...)"
    input_type, outputs_images = "image", True  # outputs: masks
    required_columns = ("image", "mask")
    default_batch_size = 8
    default_learning_rate = 6e-5  # SegFormer's fine-tuning rate
    finetune_options = {
        **Task.finetune_options,
        "labels": None,  # class names for a new head (a new label set); None keeps the model's
        "reduce_labels": None,  # True/False overrides the setting given at load
    }
    cached_head = None  # SegFormer's decode head takes every stage's features: no single input to cache
    demo_config = dict(train_size=192, eval_size=32, epochs=8, learning_rate=5e-3, batch_size=16)

    def __init__(self, model, processor, *, reduce_labels: bool = False, tokenizer=None, **kwargs):
        super().__init__(model, processor, **kwargs)
        self.reduce_labels = reduce_labels
        self.tokenizer = tokenizer  # OneFormer's, for its task token; None for the other families
        self.extra_inputs = universal.extra_inputs(model, tokenizer)
        # The loss must skip what the metrics skip (UperNet calls the setting loss_ignore_index).
        for name in ("semantic_loss_ignore_index", "loss_ignore_index"):
            if hasattr(model.config, name):
                setattr(model.config, name, IGNORE_INDEX)

    @classmethod
    def from_pretrained(cls, path, device=None, trust_remote_code=False, reduce_labels=False, **model_kwargs):
        processor = load_image_processor(path, trust_remote_code)
        model, info = universal.load_model(path, trust_remote_code=trust_remote_code, output_loading_info=True,
                                           **model_kwargs)
        return cls(model, processor, reduce_labels=reduce_labels, tokenizer=universal.load_tokenizer(path, model),
                   new_weights=info["missing_keys"], source=str(path), device=device)

    def save(self, path):
        path = super().save(path)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(path)
        return path

    @property
    def is_universal(self) -> bool:
        """Whether the model is a universal-segmentation one (Mask2Former, MaskFormer, OneFormer)."""
        return universal.is_universal(self.model)

    @classmethod
    def from_exported(cls, path, sessions, trust_remote_code=False, reduce_labels=False):
        from taskzoo.export import exported_model

        model = exported_model(path, sessions, trust_remote_code)
        return cls(model, load_image_processor(path, trust_remote_code), reduce_labels=reduce_labels,
                   source=str(path), device="cpu")

    def export_graphs(self):
        """One graph: pixel values (at the processor's size) -> logits at the model's output size; the upsampling
        to each image's own size and the argmax stay in predict."""
        from PIL import Image

        from taskzoo.export import Graph
        from taskzoo.export.optimizing import fusions_for

        model = strategies.exportable(self.model, merged=True)
        pixels, _ = self.preprocess_batch([Image.new("RGB", (64, 48), (90, 120, 150)), Image.new("RGB", (40, 40))])
        return [Graph("model", model, {"pixel_values": pixels}, ["logits"], {"pixel_values": {0: "batch"}},
                      **fusions_for(model.config))]

    @property
    def labels(self) -> list[str]:
        config = self.model.config
        return [config.id2label[i] for i in range(config.num_labels)]

    # ----------------------------------------------------------------------------------------- data
    def read_path(self, path):
        """A folder with images/ and masks/ (or annotations/) matched by file stem, a folder of split
        folders (train/, validation/) holding those, or a CSV/JSONL table of image and mask paths."""
        path = Path(path)
        if not path.is_dir():
            return data_utils.resolve_paths(data_utils.read_table(path), path.parent)
        if (path / "images").is_dir():
            return self._read_pairs(path)
        splits = [sub for sub in sorted(path.iterdir()) if (sub / "images").is_dir()]
        if not splits:
            raise DataError(f"Folder {path} has no images/ and masks/ sub-folders (files matched by name stem), "
                            "nor split folders (train/, validation/) holding them.")
        return DatasetDict({sub.name: self._read_pairs(sub) for sub in splits})

    @staticmethod
    def _read_pairs(folder: Path) -> Dataset:
        masks_folder = next((folder / name for name in MASK_FOLDERS if (folder / name).is_dir()), None)
        if masks_folder is None:
            raise DataError(f"{folder} has images/ but no {' or '.join(f'{n}/' for n in MASK_FOLDERS)} folder.")
        found = {}
        for kind, sub in (("image", folder / "images"), ("mask", masks_folder)):
            files = data_utils.image_files(sub)
            found[kind] = {file.stem: file for file in files}
            if len(found[kind]) < len(files):
                stems = [file.stem for file in files]
                twice = next(stem for stem in stems if stems.count(stem) > 1)
                raise DataError(f"{sub} has several files named {twice}.*: a {kind} is matched by its name stem.")
        for kind, other, sub in (("image", "mask", masks_folder), ("mask", "image", folder / "images")):
            unmatched = sorted(set(found[kind]) - set(found[other]))
            if unmatched:
                files = ", ".join(found[kind][stem].name for stem in unmatched[:3])
                raise DataError(f"{len(unmatched)} {kind}(s) in {folder} have no {other} of the same name stem "
                                f"in {sub}: {files}{', ...' if len(unmatched) > 3 else ''}.")
        if not found["image"]:
            raise DataError(f"{folder / 'images'} holds no images.")
        stems = sorted(found["image"])
        return Dataset.from_dict({"image": [str(found["image"][s]) for s in stems],
                                  "mask": [str(found["mask"][s]) for s in stems]})

    def load_data(self, data, role: str = "eval", columns=None):
        dataset = data_utils.pick_split(data_utils.to_dataset(data, self.read_path), role)
        if dataset is None:
            return None
        dataset = data_utils.rename_columns(dataset, columns)
        alias = next((name for name in MASK_COLUMNS if name in data_utils.column_names(dataset)), "mask")
        if alias != "mask":  # the Hub's datasets call it annotation (scene_parse_150) or label (sidewalk)
            dataset = dataset.rename_column(alias, "mask")
        data_utils.check_columns(dataset, self.required_columns, self.name, where=f"{role} data")
        return dataset

    def prepare_for_training(self, dataset) -> None:
        options = self.training_options
        if options["reduce_labels"] is not None:
            self.reduce_labels = bool(options["reduce_labels"])
        names = options["labels"]
        if names is not None and list(names) != self.labels:
            # A fresh classifier for the names (ignore_mismatched_sizes); the rest keeps its weights. A universal
            # model's class predictor gets len(names) + 1 outputs, its last the "no object" class.
            from transformers import AutoModelForSemanticSegmentation, AutoModelForUniversalSegmentation

            auto_class = AutoModelForUniversalSegmentation if self.is_universal else AutoModelForSemanticSegmentation
            self.model = heads.with_new_head(self.model, auto_class, [str(name) for name in names]).to(self.device)

    def head_modules(self) -> list[str]:
        """SegFormer-like models: the decode head. Universal models: all but the backbone (their pixel decoder,
        transformer decoder and class predictor are trained for a task, the backbone is generic)."""
        if self.is_universal:
            model = self.model.get_base_model() if strategies.is_peft(self.model) else self.model
            return universal.head_modules(model)
        return super().head_modules()

    def _mask(self, value) -> np.ndarray:
        mask = load_mask(value)
        if self.reduce_labels:  # 0 ("other") is ignored, the rest move down; 255 stays ignored
            mask = np.where(mask == 0, IGNORE_INDEX, np.where(mask == IGNORE_INDEX, IGNORE_INDEX, mask - 1))
        return mask

    def prepare(self, dataset, training: bool):
        """One pass over the masks before anything runs: every value a class of the model (or 255), and
        every mask the size of its image; errors name the value, the column and the row."""
        dataset = data_utils.cast_images(data_utils.cast_images(dataset, "image"), "mask")
        count = len(self.labels)
        rows = dataset.select_columns(["image", "mask"])
        for row_number, row in enumerate(tqdm(rows, desc=f"{self.name}: checking masks", leave=False,
                                              disable=len(rows) < 500)):
            mask = self._mask(row["mask"])
            bad = mask[((mask < 0) | (mask >= count)) & (mask != IGNORE_INDEX)]
            if bad.size:
                hint = "pass labels=[...] to finetune() for a new label set" + (
                    "" if self.reduce_labels else ", or reduce_labels=True if 0 means 'other'")
                raise DataError(f"Column 'mask', row {row_number}: value {int(bad[0])} is not a class of the model, "
                                f"which has {count} labels (0-{count - 1}; {IGNORE_INDEX} means ignore). To train "
                                f"other classes, {hint}.")
            size = data_utils.image_size(row["image"])
            if size != (mask.shape[1], mask.shape[0]):
                raise DataError(f"Row {row_number}: the image is {size[0]}x{size[1]} but its mask (column 'mask') "
                                f"is {mask.shape[1]}x{mask.shape[0]}.")
        return dataset

    def collate(self, examples: list[dict]) -> dict:
        images = [data_utils.load_image(row["image"]) for row in examples]
        masks = [self._mask(row["mask"]) for row in examples]
        for image, mask in zip(images, masks):
            if image.size != (mask.shape[1], mask.shape[0]):
                raise DataError(f"An image is {image.size[0]}x{image.size[1]} but its mask is "
                                f"{mask.shape[1]}x{mask.shape[0]}.")
        if self.is_universal:  # the masks as targets: one binary mask per class present, and its class
            pixels, sizes = universal.encode(self.processor, images)
            mask_labels, class_labels = universal.targets(masks, sizes, tuple(pixels.shape[-2:]), IGNORE_INDEX)
            return {"pixel_values": pixels, "sizes": sizes, "mask_labels": mask_labels, "class_labels": class_labels,
                    "masks": [torch.from_numpy(mask) for mask in masks]}
        # Labels are reduced above, for every model family alike: the processor must not do it again.
        options = {"do_reduce_labels": False} if hasattr(self.processor, "do_reduce_labels") else {}
        encoded = self.processor(images=images, segmentation_maps=masks, return_tensors="pt", **options)
        # "labels" (resized with the image) train the model; "masks" (as given) score it at full size.
        return {"pixel_values": encoded["pixel_values"], "labels": encoded["labels"].long(),
                "masks": [torch.from_numpy(mask) for mask in masks]}

    # ------------------------------------------------------------------------------------- training
    def training_step(self, model, batch):
        if self.is_universal:
            pixels = batch["pixel_values"]
            output = model(pixel_values=pixels, mask_labels=batch["mask_labels"], class_labels=batch["class_labels"],
                           **self._extra_inputs(pixels.device, len(pixels)))
            return {"loss": output.loss, "output": output.class_queries_logits}
        output = model(pixel_values=batch["pixel_values"], labels=batch["labels"])
        return {"loss": output.loss, "output": output.logits}

    def _extra_inputs(self, device, count: int = 1) -> dict:
        """OneFormer's task tokens for ``count`` images; nothing for the other families."""
        return {name: value.expand(count, -1).to(device) for name, value in self.extra_inputs.items()}

    def _label_maps(self, model, batch) -> list[torch.Tensor]:
        """Per image of a collated batch, its label map at its mask's size."""
        sizes = [tuple(mask.shape) for mask in batch["masks"]]
        if self.is_universal:
            return [label_map for _, label_map in universal.label_maps(
                model, self.processor, batch["pixel_values"], batch["sizes"], sizes,
                self._extra_inputs(batch["pixel_values"].device))]
        logits = model(pixel_values=batch["pixel_values"]).logits.float()
        return [F.interpolate(logit[None], size=size, mode="bilinear", align_corners=False)[0].argmax(0)
                for logit, size in zip(logits, sizes)]

    def eval_step(self, model, batch):
        """Per sample the non-zero cells of its confusion matrix, as (cell index, count) rows: scoring a
        dataset needs only their sum, and a sample holds few classes however many the model knows. With
        ``keep_metric_inputs`` also the label map and the reference mask, for your metrics."""
        count, predictions, references = len(self.labels), [], []
        for label_map, mask in zip(self._label_maps(model, batch), batch["masks"]):
            label_map, mask = label_map.cpu().numpy(), mask.cpu().numpy()
            confusion = metrics.confusion_matrix(label_map, mask, count, IGNORE_INDEX)
            cells = np.flatnonzero(confusion)
            predictions.append({"confusion": np.stack([cells, confusion.ravel()[cells]])})
            references.append(None)
            if self.keep_metric_inputs:  # ids up to 255 (the ignored value) fit a byte: 8x less to gather
                small = np.uint8 if max(count, int(mask.max(initial=0)) + 1) <= 256 else np.int32
                predictions[-1]["label_map"], references[-1] = label_map.astype(small), mask.astype(small)
        return predictions, references

    def compute_metrics(self, predictions, references):
        count = len(self.labels)
        confusion = np.zeros(count * count, dtype=np.int64)
        for prediction in predictions:
            cells, counts = prediction["confusion"]
            confusion[cells] += counts
        scores = metrics.segmentation_scores(confusion.reshape(count, count))
        per_class = scores.pop("per_class_iou")
        return {**scores, **{f"iou_{name}": iou for name, iou in zip(self.labels, per_class) if not math.isnan(iou)}}

    def metric_inputs(self, predictions, references):
        """Your metrics get, per image, the predicted label map and the reference mask: 2-D integer arrays of
        class ids at the mask's size (as ``predict(return_label_map=True)`` gives), 255 where the mask is ignored."""
        return [prediction["label_map"] for prediction in predictions], references

    # -------------------------------------------------------------------------------------- predict
    def input_of(self, row):
        return row["image"]

    def draw(self, input, output):
        return visualize(input, output)  # the masks overlaid, with a legend

    def preprocess_batch(self, inputs):
        """(pixel values, (height, width) of each image, and for universal models each image's size in the
        padded pixel values): predict gives masks at the input's size."""
        images = [data_utils.load_image(item) for item in inputs]
        if self.is_universal:
            return *universal.encode(self.processor, images), [im.size[::-1] for im in images]
        return self.processor(images=images, return_tensors="pt")["pixel_values"], [im.size[::-1] for im in images]

    def predict_batch(self, batch, return_label_map: bool = False):
        from PIL import Image

        if self.is_universal:
            pixels, processed, sizes = batch
            maps = universal.label_maps(self.model, self.processor, pixels.to(self.device), processed, sizes,
                                        self._extra_inputs(self.device))
        else:  # one image at a time: its class scores at full size can be large
            pixels, sizes = batch
            logits = self.model(pixel_values=pixels.to(self.device)).logits.float()
            maps = (F.interpolate(logit[None], size=size, mode="bilinear", align_corners=False)[0].softmax(0).max(0)
                    for logit, size in zip(logits, sizes))
        labels, results = self.labels, []
        for score, label_map in maps:
            if return_label_map:
                results.append(label_map.cpu().numpy())
                continue
            segments = []
            for class_id in label_map.unique().tolist():
                region = label_map == class_id
                segments.append({"label": labels[class_id], "score": score[region].mean().item(),
                                 "mask": Image.fromarray(region.cpu().numpy().astype(np.uint8) * 255, "L")})
            results.append(segments)
        return results

    # ---------------------------------------------------------------------------------- testing kit
    # Class 0 is the background; each shape has its own colour, as in the image-classification kit.
    SHAPES = {"square": (220, 40, 40), "circle": (40, 200, 40), "triangle": (40, 60, 230)}

    @staticmethod
    def tiny_model(path: str | os.PathLike, family: str = "segformer") -> Path:
        """A tiny random segmenter for 64 px images and the toy classes, with its PIL image processor, saved at
        ``path``: a SegFormer (the default), or a universal-segmentation ``"mask2former"``, ``"maskformer"`` or
        ``"oneformer"`` (see taskzoo/testing/segmentation.py)."""
        from taskzoo.testing import segmentation

        return segmentation.tiny_segmenter(Path(path), family, ["background", *ImageSegmentation.SHAPES])

    @staticmethod
    def toy_dataset(n: int = 64, seed: int = 0) -> Dataset:
        """64 px images of one or two coloured shapes on a noisy grey background; ``mask`` ("L" image) holds
        each pixel's class: 0 background, 1 square, 2 circle, 3 triangle."""
        from PIL import Image

        from taskzoo.testing import draw_shapes

        kinds = list(ImageSegmentation.SHAPES)
        rng = np.random.default_rng(seed)
        images, masks = [], []
        for i in range(n):
            chosen = [kinds[(i + seed) % len(kinds)]] + ([kinds[int(rng.integers(len(kinds)))]] if i % 2 else [])
            mask = Image.new("L", (64, 64), 0)
            shapes = [(kind, ImageSegmentation.SHAPES[kind], kinds.index(kind) + 1) for kind in chosen]
            images.append(draw_shapes(rng, 64, shapes, mask=mask)[0])
            masks.append(mask)
        features = Features({"image": ImageFeature(), "mask": ImageFeature()})
        return Dataset.from_dict({"image": images, "mask": masks}, features=features)
