"""Classification-style heads (text, images, boxes): which label names fine-tuning needs, and a fresh
head for them that keeps the body's weights."""

from __future__ import annotations

import tempfile

import torch

from taskzoo import data as data_utils
from taskzoo import strategies


def model_labels(model: torch.nn.Module) -> list[str]:
    config = model.config
    return [config.id2label[i] for i in range(len(config.id2label))]


def names_for_training(dataset, column: str, current: list[str], head_trained: bool) -> list[str] | None:
    """The label names the data needs, or None when the model's head already fits it.

    Names come from a ClassLabel feature or the strings in ``column``; plain integers keep the model's
    names when they fit its head, and become LABEL_0, LABEL_1, ... when they do not."""
    names = data_utils.label_names_of(dataset, column)
    if names is None:
        count = max(dataset.unique(column)) + 1
        if head_trained and count <= len(current):
            return None
        names = [f"LABEL_{i}" for i in range(count)]
    return None if head_trained and names == current else names


def with_new_head(model: torch.nn.Module, auto_class, names: list[str]) -> torch.nn.Module:
    """``model`` reloaded through ``auto_class`` with a fresh head sized for ``names`` (the label names are
    stored in its config); the body keeps its current, possibly fine-tuned, weights."""
    with tempfile.TemporaryDirectory() as folder:
        strategies.exportable(model, merged=True).save_pretrained(folder)
        return auto_class.from_pretrained(folder, num_labels=len(names), id2label=dict(enumerate(names)),
                                          label2id={name: i for i, name in enumerate(names)},
                                          ignore_mismatched_sizes=True)
