"""The evaluation loop: batched, under ``torch.inference_mode``, and counting each sample exactly once.

Under several processes Accelerate shards the data and pads the last batch with repeated samples;
``gather_for_metrics`` collects every process's per-sample results and drops those repeats, so the
metrics equal a single-process run.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from taskzoo.accelerators import new_accelerator


def run_evaluation(task, model: torch.nn.Module, loader: DataLoader, accelerator) -> dict[str, float]:
    """Run ``task.eval_step`` over a prepared loader and score the gathered results on every process."""
    was_training = model.training
    model.eval()
    pairs: list = []
    with torch.inference_mode():
        for batch in tqdm(loader, desc=f"{task.name}: evaluate", leave=False,
                          disable=not accelerator.is_local_main_process or len(loader) < 5):
            with accelerator.autocast():
                predictions, references = task.eval_step(model, batch)
            # One (prediction, reference) pair per sample, so that trimming the padded tail
            # of the last batch stays aligned across both.
            pairs.extend(accelerator.gather_for_metrics(list(zip(predictions, references)),
                                                        use_gather_object=True))
    model.train(was_training)
    predictions = [prediction for prediction, _ in pairs]
    references = [reference for _, reference in pairs]
    return {name: float(value) for name, value in task.compute_metrics(predictions, references).items()}


def evaluate_task(task, dataset, batch_size: int, mixed_precision: str = "no") -> dict[str, float]:
    """Evaluate ``task.model`` on a prepared dataset (standalone, outside fine-tuning)."""
    accelerator = new_accelerator(mixed_precision=mixed_precision)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=task.collate)
    # Only the loader is prepared: preparing the model would leave Accelerate's autocast wrapper on
    # its forward, changing later predictions.
    loader = accelerator.prepare(loader)
    task.model.to(accelerator.device)
    return run_evaluation(task, task.model, loader, accelerator)
