"""Cached frozen features: with strategy="freeze" the body's output never changes, so the body runs once
over the training data and once over the evaluation data, and the head trains and is evaluated from that
cache, epoch after epoch, at the cost of the head alone.

The cache holds what the task's head module receives (captured with a forward pre-hook), so it works for
any architecture whose head is a single module called once per forward pass. The cache lives for one
``finetune`` call: a later call (after other training changed the body, say) builds it anew.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from taskzoo import streaming


def cached_head_training(task, config, train_set, eval_set) -> tuple:
    """``(trainer, train_set, eval_set)`` for the training loop: with strategy="freeze", a task with a
    ``cached_head`` and ``cache_features`` on, the head's inputs cached and a :class:`CachedHeadTraining`;
    otherwise the task and its data as they are (a stream is never held in memory, so it is not cached)."""
    if not (config.strategy == "freeze" and task.cached_head and task.training_options.get("cache_features")) \
            or streaming.is_stream(train_set):
        return task, train_set, eval_set
    batch_size = config.eval_batch_size or config.batch_size
    train_set = build_cache(task, train_set, batch_size)
    if eval_set is not None and not streaming.is_stream(eval_set):  # evaluated each epoch: cached too
        eval_set = build_cache(task, eval_set, batch_size)
    return CachedHeadTraining(task), train_set, eval_set


def build_cache(task, dataset, batch_size: int) -> list[dict]:
    """Run the frozen model once over ``dataset``; one {"features", "labels"} row per sample (on CPU)."""
    head = task.model.get_submodule(task.cached_head)
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda module, args: captured.append(args[0].detach().to("cpu")))
    rows = []
    task.model.eval()
    try:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=task.collate)
        with torch.no_grad():  # not inference_mode: the body may train later (see Task.predict)
            for batch in tqdm(loader, desc=f"{task.name}: caching frozen features", leave=False,
                              disable=len(loader) < 10):
                labels = batch.pop("labels")
                captured.clear()
                task.model(**{key: value.to(task.device) for key, value in batch.items()})
                features = captured[-1]
                rows += [{"features": f, "labels": int(label)} for f, label in zip(features, labels)]
    finally:
        hook.remove()
    return rows


class CachedHeadTraining:
    """Stands in for a task inside the training loop: trains and evaluates ``task``'s head on cached features."""

    def __init__(self, task):
        self.task = task
        self.model = task.model.get_submodule(task.cached_head)

    def __getattr__(self, name):  # everything not overridden below is the task's own
        return getattr(self.task, name)

    def train_lengths(self, dataset) -> None:
        return None  # cached features all have one size

    def collate(self, examples: list[dict]) -> dict:
        if "features" not in examples[0]:  # evaluation rows that were not cached (a stream) are ordinary rows
            return self.task.collate(examples)
        return {"features": torch.stack([row["features"] for row in examples]),
                "labels": torch.tensor([row["labels"] for row in examples])}

    def training_step(self, model, batch):
        logits = model(batch["features"])
        return {"loss": F.cross_entropy(logits.float(), batch["labels"]), "output": logits}

    def eval_step(self, model, batch):
        if "features" not in batch:
            return self.task.eval_step(self.task.model, batch)
        # The task's own eval_step turns logits into its predictions (top-1, top-5, ...): it runs unchanged,
        # with the head standing in for the whole model and the features in the place of the model's input.
        inputs = {self.task.model.main_input_name: batch["features"], "labels": batch["labels"]}
        return self.task.eval_step(_HeadAsModel(model), inputs)


class _HeadAsModel:
    """Called as the whole model is (``model(input_ids=...)``, ``model(pixel_values=...)``) with the cached
    features as its one input, it returns the head's logits the way a transformers model does."""

    def __init__(self, head: torch.nn.Module):
        self.head = head

    def __call__(self, **inputs) -> SimpleNamespace:
        (features,) = inputs.values()
        return SimpleNamespace(logits=self.head(features))
