"""Classification-style heads (text, images, boxes): which label names fine-tuning needs, a fresh head for
them that keeps the body's weights, and the scores a head's logits mean."""

from __future__ import annotations

import tempfile

import torch

from taskzoo import data as data_utils, strategies, streaming
from taskzoo.errors import DataError
from taskzoo.models import load_reports_hidden


def model_labels(model: torch.nn.Module) -> list[str]:
    config = model.config
    return [config.id2label[i] for i in range(len(config.id2label))]


def scores_from_logits(logits: torch.Tensor, config) -> torch.Tensor:
    """The scores predict reports, by the head's ``problem_type`` as transformers' classification pipelines
    choose them: a regression head's raw values; sigmoids for multi-label heads and heads of one output;
    otherwise the softmax over the labels."""
    if config.problem_type == "regression":
        return logits
    if config.problem_type == "multi_label_classification" or logits.shape[-1] == 1:
        return logits.sigmoid()
    return logits.softmax(-1)


def names_for_training(dataset, column: str, current: list[str], head_trained: bool,
                       given: list[str] | None = None) -> list[str] | None:
    """The label names the data needs, or None when the model's head already fits it.

    Names come from ``given`` (the ``labels=[...]`` option), a ClassLabel feature or the strings in
    ``column``; plain integers keep the model's names when they fit its head, and become LABEL_0, LABEL_1, ...
    when they do not. A stream cannot be scanned for its labels: without ``given`` or a ClassLabel it keeps
    the model's trained head, and a label outside it is refused as the stream is read."""
    names = [str(name) for name in given] if given is not None else None
    if names is None and streaming.is_stream(dataset):
        feature = (dataset.features or {}).get(column)
        if hasattr(feature, "names"):
            names = list(feature.names)
        elif head_trained:
            return None
        else:
            raise DataError(f"The model has no trained head, and a stream cannot be scanned for its label set: "
                            f"pass the label names with labels=[...] (column {column!r}).")
    if names is None:
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
    with tempfile.TemporaryDirectory() as folder, load_reports_hidden(everything=True):  # a new head: on purpose
        strategies.exportable(model, merged=True).save_pretrained(folder)
        return auto_class.from_pretrained(folder, num_labels=len(names), id2label=dict(enumerate(names)),
                                          label2id={name: i for i, name in enumerate(names)},
                                          ignore_mismatched_sizes=True)
