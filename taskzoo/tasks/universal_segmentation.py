"""Universal-segmentation models (Mask2Former, MaskFormer, OneFormer) as semantic segmenters, for
image_segmentation.py.

These models predict ``num_queries`` masks, each with a class distribution over the labels plus a last
"no object" class, instead of one logit per class and pixel. The seam with the task is small:

- :func:`load_model` picks AutoModelForSemanticSegmentation or AutoModelForUniversalSegmentation;
- :func:`targets` turns semantic masks into what they train on: per image one binary mask per class present
  and those classes' ids, as the models' image processors build them (ignored pixels are in no mask);
- :func:`label_maps` runs the model and the processor's ``post_process_semantic_segmentation`` on each
  image's own (unpadded) pixels: per pixel a class and its probability;
- :func:`head_modules`: what ``strategy="freeze"`` trains.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

# The families whose semantic segmentation is tested here; the other universal models (DETR's panoptic head,
# EoMT, VideoMT) take other targets or inputs.
FAMILIES = ("mask2former", "maskformer", "oneformer")
# The pretrained body (the backbone) of every family above; the pixel decoder, the transformer decoder and
# the class predictor make the head, which is task-specific in these models.
BODY = "model.pixel_level_module.encoder"
TASK_TEXT = "the task is semantic"  # OneFormer's task token text (OneFormerProcessor's format)


def load_model(path, trust_remote_code: bool = False, **kwargs):
    """The segmentation model at ``path``: AutoModelForSemanticSegmentation's families, or
    AutoModelForUniversalSegmentation's for Mask2Former, MaskFormer and OneFormer. ``kwargs`` go to
    ``from_pretrained`` (and what it returns is returned)."""
    from transformers import AutoConfig, AutoModelForSemanticSegmentation, AutoModelForUniversalSegmentation
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES as SEMANTIC,
        MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES as UNIVERSAL,
    )

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    kind = config.model_type
    if kind == "oneformer" and config.is_training:
        raise ValueError(f"{path} is a OneFormer built for its original training (is_training=true in config.json): "
                         "it then needs text for each query, which taskzoo does not make. Set it to false.")
    if kind in FAMILIES:
        return AutoModelForUniversalSegmentation.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
    try:
        return AutoModelForSemanticSegmentation.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
    except ValueError as error:
        if "Unrecognized configuration class" not in str(error):
            raise
        what = f"a universal-segmentation {kind} model" if kind in UNIVERSAL else f"a {kind} model"
        raise ValueError(f"image-segmentation cannot use {path}: it is {what}; the model types supported are "
                         f"{', '.join(sorted({*SEMANTIC, *FAMILIES}))}.") from None


def is_universal(model: torch.nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "model_type", None) in FAMILIES


def load_tokenizer(path, model):
    """OneFormer's CLIP tokenizer (it reads the task token text); None for the other families."""
    if getattr(model.config, "model_type", None) != "oneformer":
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise ValueError(f"OneFormer reads its task from text, and {path} has no tokenizer that loads "
                         f"({type(error).__name__}: {str(error).strip().splitlines()[0][:150]}).") from error


def extra_inputs(model, tokenizer) -> dict[str, torch.Tensor]:
    """What a family takes besides the pixels, for one image: OneFormer's task tokens ("the task is
    semantic", as OneFormerProcessor makes them: padded token ids, zero where the padding is)."""
    if tokenizer is None:
        return {}
    tokens = tokenizer([TASK_TEXT], padding="max_length", max_length=model.config.task_seq_len, truncation=True,
                       return_tensors="pt")
    return {"task_inputs": tokens["input_ids"] * tokens["attention_mask"]}


def head_modules(model: torch.nn.Module) -> list[str]:
    """Every module with parameters outside the path to the backbone (:data:`BODY`): for Mask2Former
    ``class_predictor``, ``model.transformer_module`` and ``model.pixel_level_module.decoder``."""
    head, module, prefix = [], model, ""
    for part in BODY.split("."):
        children = dict(module.named_children())
        head += [prefix + name for name, child in children.items()
                 if name != part and any(True for _ in child.parameters())]
        module, prefix = children[part], prefix + part + "."
    return head


def encode(processor, images: list) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Images -> (pixel values padded to the batch's largest, each image's (height, width) in them before
    padding). The processor pads at the bottom and right and says where in ``pixel_mask``."""
    encoded = processor(images=images, return_tensors="pt")
    pixels = encoded["pixel_values"]
    if "pixel_mask" not in encoded:
        return pixels, [tuple(pixels.shape[-2:])] * len(images)
    mask = encoded["pixel_mask"]
    return pixels, [(int(m[:, 0].sum()), int(m[0].sum())) for m in mask]


def targets(masks: list[np.ndarray], sizes: list[tuple[int, int]], padded: tuple[int, int],
            ignore_index: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Semantic masks (class ids, ``ignore_index`` ignored) -> per image ``mask_labels`` (one binary mask per
    class present, at the padded size: resized with the image, nearest, as the processors do) and
    ``class_labels`` (those classes). Ignored and padded pixels are in no mask."""
    from PIL import Image

    mask_labels, class_labels = [], []
    for mask, (height, width) in zip(masks, sizes):
        resized = np.asarray(Image.fromarray(mask.astype(np.int32), "I").resize((width, height), Image.NEAREST))
        canvas = np.full(padded, ignore_index, dtype=np.int64)
        canvas[:height, :width] = resized
        classes = np.unique(canvas)
        classes = classes[classes != ignore_index]
        mask_labels.append(torch.from_numpy((canvas[None] == classes[:, None, None]).astype(np.float32)))
        class_labels.append(torch.from_numpy(classes.astype(np.int64)))
    return mask_labels, class_labels


def label_maps(model, processor, pixels: torch.Tensor, sizes: list[tuple[int, int]],
               target_sizes: list[tuple[int, int]], extra: dict | None = None) -> list[tuple]:
    """Per image, at its target size, (each pixel's probability of its class, each pixel's class id).

    The processor's post_process_semantic_segmentation weighs each query's mask by its class probabilities
    (the "no object" class left out) and sums them per class; normalised over the classes, those sums give
    each pixel a distribution over the labels, whose most likely class is the processor's label map.
    Each image is run on its own pixels, without the padding of a batch of mixed sizes (the models read no
    padding mask): images of one size share a forward pass, so a batch predicts as one image at a time."""
    groups: dict[tuple[int, int], list[int]] = {}
    for index, size in enumerate(sizes):
        groups.setdefault(tuple(size), []).append(index)
    results: list = [None] * len(sizes)
    for (height, width), indices in groups.items():
        inputs = {name: value.expand(len(indices), -1) for name, value in (extra or {}).items()}
        outputs = model(pixel_values=pixels[indices, :, :height, :width], **inputs)
        for row, index in enumerate(indices):  # one at a time: an image's class scores at full size can be large
            single = SimpleNamespace(class_queries_logits=outputs.class_queries_logits[row:row + 1].float(),
                                     masks_queries_logits=outputs.masks_queries_logits[row:row + 1].float())
            summed = processor.post_process_semantic_segmentation(
                single, target_sizes=[target_sizes[index]], return_segmentation_scores=True)[0]["segmentation_scores"]
            score, label_map = summed.max(0)
            results[index] = (score / summed.sum(0).clamp_min(torch.finfo(summed.dtype).tiny), label_map)
    return results
