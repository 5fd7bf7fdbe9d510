"""Object-detection data: the ``objects`` column (bboxes and categories, as a dict of lists or a list of
per-object dicts), its category names and features, and COCO detection files (read, and written for tests and
tools). Boxes here are COCO's ``[x, y, width, height]`` in pixels (see taskzoo/tasks/object_detection.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, Features, Image, List, Value

from taskzoo import data as data_utils
from taskzoo.errors import DataError


def unpack_objects(objects, row: int = 0) -> tuple[list, list]:
    """(bboxes, categories) from an ``objects`` value: a dict of lists, or a list of per-object dicts."""
    if isinstance(objects, list):
        objects = {"bbox": [o.get("bbox") for o in objects], "category": [o.get("category") for o in objects]}
    if not isinstance(objects, Mapping) or "bbox" not in objects or "category" not in objects:
        raise DataError(f"Row {row}: objects must be {{'bbox': [[x, y, width, height], ...], 'category': [...]}}; "
                        f"got {objects!r:.120}.")
    boxes, categories = objects["bbox"] or [], objects["category"] or []
    if len(boxes) != len(categories):
        raise DataError(f"Row {row}: objects has {len(boxes)} bbox but {len(categories)} category values.")
    return boxes, categories


def label_names(dataset) -> list[str] | None:
    """The category names: from a ClassLabel, or the sorted strings; None for plain integers."""
    category = category_feature(dataset.features)
    if hasattr(category, "names"):
        return list(category.names)
    values = {c for objects in dataset["objects"] for c in unpack_objects(objects)[1]}
    if values and all(isinstance(v, str) for v in values):
        return sorted(values)
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        raise DataError(f"objects.category must hold strings or integers; found {sorted(map(repr, values))[:5]}.")
    return None


def category_feature(features):  # objects.category's feature (a ClassLabel holds the names), or None
    feature = features.get("objects")
    feature = getattr(feature, "feature", feature)  # Sequence({...}) in older datasets
    return getattr(feature.get("category"), "feature", None) if isinstance(feature, Mapping) else None


def detection_features(names: list[str]) -> Features:
    return Features({"image": Image(), "objects": {"bbox": List(List(Value("float64"))),
                                                   "category": List(ClassLabel(names=names))}})


def looks_like_coco(path: Path) -> bool:
    """A COCO json names its "images" near the start (after info and licenses): no need to parse it all."""
    with open(path, encoding="utf-8", errors="ignore") as handle:
        head = handle.read(1 << 20)
    return head.lstrip().startswith("{") and '"images"' in head


def read_coco(path: str | os.PathLike) -> Dataset:
    """A COCO detection json -> rows of ``image`` (path) and ``objects`` (bbox xywh, category a ClassLabel of
    the category names, in id order). Image files are looked for beside the json, in images/ beside it, and in
    COCO's own layout (annotations/instances_val2017.json -> val2017/). Crowd regions are skipped."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is not valid JSON: {error}") from error
    missing = [key for key in ("images", "annotations", "categories") if key not in record]
    if missing:
        raise DataError(f"{path} is not a COCO detection file: it has no {missing[0]!r} list.")
    categories = sorted(record["categories"], key=lambda category: category["id"])
    index = {category["id"]: number for number, category in enumerate(categories)}
    objects = {image["id"]: {"bbox": [], "category": []} for image in record["images"]}
    for annotation in record["annotations"]:
        if annotation.get("iscrowd"):
            continue
        if annotation["image_id"] not in objects or annotation["category_id"] not in index:
            raise DataError(f"{path}: annotation {annotation.get('id')} names image {annotation['image_id']} and "
                            f"category {annotation['category_id']}, one of which is not listed.")
        objects[annotation["image_id"]]["bbox"].append(annotation["bbox"])
        objects[annotation["image_id"]]["category"].append(index[annotation["category_id"]])
    folders = [path.parent, path.parent / "images", path.parent.parent / path.stem.removeprefix("instances_")]
    files = []
    for image in record["images"]:
        found = [folder / image["file_name"] for folder in folders if (folder / image["file_name"]).exists()]
        if not found:
            raise DataError(f"{path}: image file {image['file_name']!r} is in none of {list(map(str, folders))}.")
        files.append(str(found[0]))
    return Dataset.from_dict({"image": files, "objects": [objects[image["id"]] for image in record["images"]]},
                             features=detection_features([category["name"] for category in categories]))


def write_coco(dataset, path: str | os.PathLike) -> Path:
    """Write a dataset with ``image`` and ``objects`` as a COCO json at ``path``, its images as PNG files in
    images/ beside it. Returns the json's path."""
    path = Path(path)
    (path.parent / "images").mkdir(parents=True, exist_ok=True)
    names = label_names(dataset) or [str(i) for i in range(1 + max(
        (c for objects in dataset["objects"] for c in unpack_objects(objects)[1]), default=0))]
    images, annotations = [], []
    for number, row in enumerate(dataset, 1):
        image, file_name = data_utils.load_image(row["image"]), f"images/{path.stem}-{number:05d}.png"
        image.save(path.parent / file_name)
        images.append({"id": number, "file_name": file_name, "width": image.width, "height": image.height})
        for box, category in zip(*unpack_objects(row["objects"])):
            index = names.index(category) if isinstance(category, str) else category
            annotations.append({"id": len(annotations) + 1, "image_id": number, "category_id": index + 1,
                                "bbox": list(box), "area": box[2] * box[3], "iscrowd": 0})
    categories = [{"id": number, "name": name} for number, name in enumerate(names, 1)]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path
