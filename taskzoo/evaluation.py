"""The evaluation loop: batched, under ``torch.inference_mode``, and counting each sample exactly once.

Under several processes Accelerate shards the data and pads the last batch with repeated samples;
``gather_for_metrics`` collects every process's per-sample results and drops those repeats, so the
metrics equal a single-process run. A stream (IterableDataset) is split between the processes by
shards instead (streaming.for_this_process); each keeps its results and they are gathered once at the end.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from taskzoo import streaming
from taskzoo.accelerators import new_accelerator


def run_evaluation(task, model: torch.nn.Module, loader: DataLoader, accelerator) -> dict[str, float]:
    """Run ``task.eval_step`` over a prepared loader and score the gathered results on every process."""
    was_training = model.training
    model.eval()
    pairs: list = []
    streamed = streaming.is_stream(loader.dataset)
    batches = loader if not streamed else streaming.send_to(loader, accelerator)
    with torch.inference_mode():
        for batch in tqdm(batches, desc=f"{task.name}: evaluate", leave=False,
                          disable=not accelerator.is_local_main_process or (not streamed and len(loader) < 5)):
            with accelerator.autocast():
                predictions, references = task.eval_step(model, batch)
            if streamed:  # this process's own examples, gathered below
                pairs.extend(zip(predictions, references))
                continue
            # One (prediction, reference) pair per sample, so that trimming the padded tail
            # of the last batch stays aligned across both.
            pairs.extend(accelerator.gather_for_metrics(list(zip(predictions, references)),
                                                        use_gather_object=True))
    if streamed and accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        pairs = gather_object(pairs)
    model.train(was_training)
    predictions = [prediction for prediction, _ in pairs]
    references = [reference for _, reference in pairs]
    return {name: float(value) for name, value in task.compute_metrics(predictions, references).items()}


def evaluate_task(task, dataset, batch_size: int, mixed_precision: str = "no") -> dict[str, float]:
    """Evaluate ``task.model`` on a prepared dataset (standalone, outside fine-tuning)."""
    accelerator = new_accelerator(mixed_precision=mixed_precision)
    loader = eval_loader(task, dataset, batch_size, accelerator)
    task.model.to(accelerator.device)
    return run_evaluation(task, task.model, loader, accelerator)


def eval_loader(task, dataset, batch_size: int, accelerator, num_workers: int = 0) -> DataLoader:
    """In-order batches of ``dataset``, this process's share of them under several processes.

    Only the loader is prepared: preparing the model would leave Accelerate's autocast wrapper on its
    forward, changing later predictions. A stream is split by shards instead of by Accelerate, which
    would have every process read all of it."""
    if streaming.is_stream(dataset):
        return DataLoader(streaming.for_this_process(dataset, accelerator), batch_size=batch_size,
                          collate_fn=task.collate, num_workers=num_workers)
    return accelerator.prepare(DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=task.collate,
                                          num_workers=num_workers))
