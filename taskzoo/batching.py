"""predict's batches: sorted by length, preprocessed ahead of the model (in worker processes with
``num_workers``), and halved when one does not fit in device memory, so a long prediction run is not lost to
one large batch."""

from __future__ import annotations

import bisect
import heapq
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from tqdm.auto import tqdm

from taskzoo.errors import TaskzooWarning
from taskzoo.predict_options import check_options


def predict_in_batches(task, inputs: Any, batch_size: int | None, progress: bool | None, mixed_precision: str,
                       compile: bool, num_workers: int, options: dict) -> Any:
    """What :meth:`taskzoo.task.Task.predict` does: check the options and inputs, then run length-sorted
    batches through ``task.predict_batch`` (preprocessed ahead, halved on running out of memory) and give the
    outputs back in input order; one input gives one output."""
    autocast = task.autocast(mixed_precision)
    check_options(task, {**options, "num_workers": num_workers, "compile": compile})
    task.warn_if_untrained()
    single = task.is_single(inputs)
    items = [inputs] if single else list(inputs)
    if not items:
        return []
    batch_size = task.check_batch_size(batch_size)
    task.check_inputs(items)
    # Length-sorted batches pad less; outputs are put back in input order below.
    order = sorted(range(len(items)), key=lambda i: task.input_length(items[i]), reverse=True)
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    outputs: list[Any] = [None] * len(items)
    bar = tqdm(total=len(items), desc=f"{task.name}: predict", unit="input",
               disable=not (progress if progress is not None else len(batches) > 10))
    prepared = PreparedBatches(task, items, batches, options, num_workers)
    if any(module.training for module in task.model.modules()):
        task.model.eval()  # ~2 ms a call for MiniLM (transformers' train() override); the flag scan is cheap
    # no_grad, not inference_mode: tensors a model caches during predict (BEiT's relative position index,
    # say) must stay usable when it trains later in the same process (transformers' pipeline does the same).
    with torch.no_grad(), autocast, task.compiled(compile):
        for indices, results in halving_on_oom(task, prepared, lambda batch: task.predict_batch(batch, **options)):
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
    """predict's batches as ``(indices, preprocessed batch)``, preprocessed in this process or, with
    ``num_workers``, by a DataLoader's worker processes a few batches ahead. Batches halved after running
    out of memory (:meth:`retry`) come next, preprocessed here."""

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


def token_budget_batches(lengths: list[int], max_tokens: int, batch_cost: int) -> list[list[int]]:
    """Indices of ``lengths`` (inputs' lengths in tokens) in batches, longest first, each of at most
    ``max_tokens`` padded tokens (rows x its longest; an input longer than that makes a batch alone).
    Short inputs go in large batches, long ones in small. Batch ends are chosen to spend the least on padding
    plus ``batch_cost`` (what running one more batch costs, in tokens of compute): a batch ends where the length
    changes or where it is full, and a shortest path over those ends picks the cheapest set."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    ordered = [lengths[i] for i in order]
    count = len(order)
    length_changes = [end for end in range(1, count + 1) if end == count or ordered[end] != ordered[end - 1]]
    best = {0: (0, 0)}  # end position -> (least cost of batching order[:end], where its last batch starts)
    pending = [0]  # every move goes forward, so popping the smallest position first settles it
    while pending:
        start = heapq.heappop(pending)
        if start == count:
            break
        longest = ordered[start]
        full = min(count, start + max(1, max_tokens // longest))
        ends = {full, *length_changes[bisect.bisect_right(length_changes, start):
                                      bisect.bisect_right(length_changes, full)]}
        for end in ends:
            cost = best[start][0] + batch_cost + (end - start) * longest
            if end not in best:
                heapq.heappush(pending, end)
            if end not in best or cost < best[end][0]:
                best[end] = (cost, start)
    batches, end = [], count
    while end:
        start = best[end][1]
        batches.append(order[start:end])
        end = start
    return batches[::-1]
