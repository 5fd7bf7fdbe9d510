"""predict's batches: planned by length (:func:`plan_batches`, also the server's), preprocessed ahead of the
model (in worker processes with ``num_workers``), and halved when one does not fit in device memory, so a long
prediction run is not lost to one large batch."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from taskzoo.errors import TaskzooWarning, renamed
from taskzoo.predict_options import check_options, route


def predict_in_batches(task, inputs: Any, batch_size: int | None, progress: bool | None, mixed_precision: str,
                       compile: bool, num_workers: int, options: dict) -> Any:
    """What :meth:`taskzoo.task.Task.predict` does: check the options and inputs, then run length-sorted
    batches through ``task.predict_batch`` (preprocessed ahead, halved on running out of memory) and give the
    outputs back in input order; one input gives one output."""
    autocast = task.autocast(mixed_precision)
    options = renamed(options, task.renamed_options, "predict()")
    check_options(task, {**options, "num_workers": num_workers, "compile": compile})
    task.warn_if_untrained()
    single = task.is_single(inputs)
    items = [inputs] if single else list(inputs)
    if not items:
        return []
    batch_size = task.check_batch_size(batch_size)
    task.check_inputs(items)
    # Length-sorted batches pad less; outputs are put back in input order below.
    batches = plan_batches([task.input_length(item) for item in items], max_rows=batch_size)
    outputs: list[Any] = [None] * len(items)
    bar = tqdm(total=len(items), desc=f"{task.name}: predict", unit="input",
               disable=not (progress if progress is not None else len(batches) > 10))
    preprocess_options, predict_options = route(task, options)  # each stage gets the options it names
    prepared = PreparedBatches(task, items, batches, preprocess_options, num_workers)
    if any(module.training for module in task.model.modules()):
        task.model.eval()  # ~2 ms a call for MiniLM (transformers' train() override); the flag scan is cheap
    # no_grad, not inference_mode: tensors a model caches during predict (BEiT's relative position index,
    # say) must stay usable when it trains later in the same process (transformers' pipeline does the same).
    with torch.no_grad(), autocast, task.compiled(compile):
        for indices, results in halving_on_oom(task, prepared, partial(task.predict_batch, **predict_options)):
            for index, result in zip(indices, results):
                outputs[index] = result
            bar.update(len(indices))
    bar.close()
    task.warn_truncated("predict")
    return outputs[0] if single else outputs


def halving_on_oom(task, prepared: PreparedBatches, run: Callable[[Any], list]) -> Iterator[tuple[list[int], list]]:
    """``(indices, run(batch))`` for each prepared batch. A batch that runs out of device memory is split
    in two halves, which come next (again halved if need be); a single input that does not fit raises."""
    for indices, batch in prepared:
        try:
            results = run(batch)
        except torch.OutOfMemoryError:
            if len(indices) == 1:
                raise
            half = len(indices) // 2
            prepared.retry(indices[:half], indices[half:])
            warnings.warn(f"{task.name}: out of memory with a batch of {len(indices)}; retrying as two batches "
                          f"of {half} and {len(indices) - half}.", TaskzooWarning, stacklevel=2)
            if task.device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        yield indices, results


class PreparedBatches:
    """predict's batches as ``(indices, preprocessed batch)``, preprocessed (with ``options``: preprocess_batch's
    own) in this process or, with ``num_workers``, by a DataLoader's worker processes a few batches ahead.
    Batches halved after running out of memory (:meth:`retry`) come next, preprocessed here."""

    def __init__(self, task, items: list, batches: list[list[int]], options: dict, num_workers: int):
        self.task, self.items, self.options, self.retries = task, items, options, []
        if num_workers:
            from torch.utils.data import DataLoader

            # batch_size=None: each element (a list of indices) goes to collate_fn whole.
            self.stream = iter(DataLoader(batches, batch_size=None, num_workers=num_workers,
                                          collate_fn=self.prepare, pin_memory=task.device.type == "cuda"))
        else:
            self.stream = map(self.prepare, batches)

    def prepare(self, indices: list[int]) -> tuple[list[int], Any]:
        return indices, self.task.preprocess_batch([self.items[i] for i in indices], **self.options)

    def retry(self, *batches: list[int]) -> None:
        self.retries[:0] = batches

    def __iter__(self):
        return self

    def __next__(self) -> tuple[list[int], Any]:
        return self.prepare(self.retries.pop(0)) if self.retries else next(self.stream)


def plan_batches(lengths: list[int], max_rows: int | None = None, max_tokens: int | None = None,
                 batch_cost: float | None = None) -> list[list[int]]:
    """Indices of ``lengths`` (each input's length: tokens, characters) in batches, longest first, each of at
    most ``max_rows`` inputs and ``max_tokens`` padded tokens (rows x its longest; an input longer than that
    makes a batch alone). Without ``batch_cost``: each batch as full as the caps allow, the fewest batches
    ("sort longest first, cut every N" under a row cap alone). With it: the batches that spend the least on
    padded tokens plus ``batch_cost`` per batch (what one more forward pass costs, in tokens of compute), so
    short inputs go in large batches and long ones in small.

    Exact: some cheapest split is contiguous in the sorted order (give the group with the longest input the
    longest inputs, the next group the next ones, and so on: no group's sizes or longest input grows), so a
    dynamic programme over the sorted order finds it. A batch may start at position ``i`` only while it can
    still reach the end ``j`` (``i + rows(i) >= j``, increasing with ``i``), so each end looks at one numpy
    slice: thousands of lengths are planned in a small fraction of one forward pass.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)
    count = len(order)
    ordered = np.array([lengths[i] for i in order], dtype=np.float64)
    rows = np.full(count, max_rows or max(count, 1), dtype=np.int64)  # how many rows a batch starting here may hold
    if max_tokens is not None:
        fit = np.where(ordered > 0, max_tokens // np.maximum(ordered, 1), count)
        rows = np.maximum(np.minimum(rows, fit.astype(np.int64)), 1)
    starts = [0] * (count + 1)  # starts[end]: where the batch that ends at ``end`` begins
    if batch_cost is None:
        start = 0
        while start < count:
            end = min(count, start + int(rows[start]))
            starts[end], start = start, end
    else:
        first = np.searchsorted(np.arange(count) + rows, np.arange(count + 1))  # earliest start reaching each end
        # 2**-20 token more a batch: of equal costs the split with fewer batches wins, and with whole lengths
        # and costs the sums stay exact in binary, so equal splits tie exactly.
        batch_cost += 2.0 ** -20
        best = np.zeros(count + 1)  # best[end]: the least cost of batching order[:end]
        offset = np.empty(count)  # best[i] - i x ordered[i]: a batch [i, end) costs offset[i] + end x ordered[i]
        for end in range(1, count + 1):
            offset[end - 1] = best[end - 1] - (end - 1) * ordered[end - 1]
            candidates = offset[first[end]:end] + end * ordered[first[end]:end]
            # Of equal splits the last: the earlier batches the fuller, as without a cost.
            cheapest = len(candidates) - 1 - int(candidates[::-1].argmin())
            best[end], starts[end] = candidates[cheapest] + batch_cost, int(first[end]) + cheapest
    batches, end = [], count
    while end:
        batches.append(order[starts[end]:end])
        end = starts[end]
    return batches[::-1]
