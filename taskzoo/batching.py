"""predict's batches: preprocessed ahead of the model (in worker processes with ``num_workers``), and halved
when one does not fit in device memory, so a long prediction run is not lost to one large batch."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch


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
            warnings.warn(f"{task.name}: out of memory with a batch of {len(indices)}; "
                          f"retrying as two batches of {half} and {len(indices) - half}.", stacklevel=2)
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
