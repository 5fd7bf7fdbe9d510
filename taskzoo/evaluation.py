"""The evaluation loop: batched, under ``torch.no_grad``, and counting each sample exactly once.

Under several processes Accelerate shards the data and pads the last batch with repeated samples;
``gather_for_metrics`` collects every process's per-sample results and drops those repeats, so the
metrics equal a single-process run. The main process alone keeps the gathered results and scores them
(the task's metrics, then your own, each run once over every example), and broadcasts the scores, so
that every process logs and picks the best checkpoint alike. A stream
(IterableDataset) is split between the processes by shards instead (streaming.for_this_process); each
keeps its results and they are gathered once at the end.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from taskzoo import streaming
from taskzoo.accelerators import new_accelerator
from taskzoo.custom_metrics import Evaluation, MetricError, MetricSet
from taskzoo.errors import DataError


def run_evaluation(task, model: torch.nn.Module, loader: DataLoader, accelerator,
                   metrics: MetricSet | None = None) -> Evaluation:
    """Run ``task.eval_step`` over a prepared loader; score on the main process and share the scores."""
    was_training = model.training
    model.eval()
    pairs: list = []
    streamed = streaming.is_stream(loader.dataset)
    batches = loader if not streamed else streaming.send_to(loader, accelerator)
    # Your metrics need the task's natural outputs, which some eval_steps only keep when asked (masks, images).
    keeping = task.keeping_metric_inputs() if metrics else nullcontext()
    with torch.no_grad(), keeping:  # not inference_mode: the model trains on (see Task.predict)
        for batch in tqdm(batches, desc=f"{task.name}: evaluate", leave=False,
                          disable=not accelerator.is_local_main_process or (not streamed and len(loader) < 5)):
            with accelerator.autocast():
                predictions, references = task.eval_step(model, batch)
            if streamed:  # this process's own examples, gathered below
                pairs.extend(zip(predictions, references))
                continue
            # One (prediction, reference) pair per sample, so that trimming the padded tail
            # of the last batch stays aligned across both.
            gathered = accelerator.gather_for_metrics(list(zip(predictions, references)), use_gather_object=True)
            if accelerator.is_main_process:  # the others drop their copy at once: only the main process scores
                pairs.extend(gathered)
    if streamed and accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        pairs = gather_object(pairs)
    model.train(was_training)
    evaluation = failed = None
    if accelerator.is_main_process:
        try:
            evaluation = score(task, pairs, metrics)
        except Exception as error:  # noqa: BLE001 - raised below, after the other processes are told
            failed = error
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        # An error on the main process is sent as text, so that no process waits forever for the scores.
        shared = [evaluation if failed is None else f"{type(failed).__name__}: {failed}"]
        evaluation = broadcast_object_list(shared)[0]
    if failed is not None:
        raise failed
    if isinstance(evaluation, str):
        raise RuntimeError(f"Evaluation failed on the main process: {evaluation}")
    return evaluation


def score(task, pairs: list, metrics: MetricSet | None) -> Evaluation:
    """The task's metrics over (prediction, reference) pairs, then yours on the task's ``metric_inputs``."""
    predictions = [prediction for prediction, _ in pairs]
    references = [reference for _, reference in pairs]
    builtin = {name: float(value) for name, value in task.compute_metrics(predictions, references).items()}
    if not metrics:
        return Evaluation(builtin)
    return metrics.compute(*task.metric_inputs(predictions, references), builtin)


def evaluate_task(task, data, batch_size: int | None = None, columns=None, mixed_precision: str = "no",
                  metrics=None) -> dict[str, float]:
    """What :meth:`taskzoo.task.Task.evaluate` does (standalone, outside fine-tuning): load, check and prepare
    ``data``, then evaluate ``task.model`` on it.

    A metric of yours that fails raises :class:`~taskzoo.custom_metrics.MetricError` naming it; the scores
    that were computed ride along on the error (``error.metrics``), so the evaluation is not lost.
    """
    task.warn_if_untrained()
    metrics = MetricSet.of(metrics)  # scripts load (and bad items are refused) before any work
    dataset = task.load_data(data, "eval", columns)
    if dataset is None:
        raise DataError("The DatasetDict has no validation or test split to evaluate on.")
    dataset = task.prepared(dataset, training=False)
    accelerator = new_accelerator(mixed_precision=mixed_precision)
    loader = eval_loader(task, dataset, batch_size or task.default_batch_size, accelerator)
    task.model.to(accelerator.device)
    evaluation = run_evaluation(task, task.model, loader, accelerator, metrics)
    if evaluation.failures:
        raise MetricError(f"{task.name}: your metric failed: {evaluation.failure_text()}. The other scores are on "
                          "this error's .metrics.", evaluation.metrics, evaluation.failures)
    task.warn_truncated("evaluate")
    return evaluation.metrics


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
