"""Streamed data (a ``datasets.IterableDataset``): datasets larger than memory or disk, read as they train.

A stream cannot be scanned up front, so everything here works on the fly:

- :func:`prepare_in_chunks` runs a task's own ``prepare()`` (its column checks and label encoding) on
  small in-memory chunks of the stream as they are read, so every task accepts a stream unchanged;
- :func:`head` gives the first rows, for the few decisions that need a look at the data (validation prompts);
- :func:`for_this_process` gives each process its own shards (``split_dataset_by_node``), so that no example
  is read twice in a pass;
- :func:`batches_in_step` stops every process as soon as one runs out, so that they all take the same steps.
"""

from __future__ import annotations

from typing import Any

import torch
from datasets import Audio, Dataset, Image, IterableDataset, IterableDatasetDict

from taskzoo.errors import DataError, TrainingError

CHUNK_ROWS = 256  # rows prepared together: the per-chunk cost (an Arrow table) is paid once per 256 rows


def is_stream(data: Any) -> bool:
    return isinstance(data, (IterableDataset, IterableDatasetDict))


def head(dataset, rows: int) -> Dataset:
    """The first ``rows`` rows as an in-memory Dataset (all of them for an in-memory Dataset that is shorter)."""
    if not isinstance(dataset, IterableDataset):
        return dataset.select(range(min(rows, len(dataset))))
    dataset = undecoded(dataset)
    first = list(dataset.take(rows))
    if not first:
        raise DataError("The stream is empty: it yielded no rows.")
    return Dataset.from_list(first, features=dataset.features)


def column_names(dataset) -> list[str]:
    """A stream's columns: from its features, or (a generator without declared features) its first row."""
    if dataset.column_names is not None:
        return dataset.column_names
    return head(dataset, 1).column_names


def undecoded(data):
    """A stream's (or a Dataset's) image and audio columns as files, not decoded: the task decodes them (naming a
    bad file; and datasets' audio decoder needs torchcodec, which does not import beside CPU torch), and a
    stream's chunk is not re-encoded on its way through prepare(). Anything without features comes back as is."""
    for name, feature in (getattr(data, "features", None) or {}).items():
        if isinstance(feature, (Image, Audio)) and feature.decode:
            data = data.cast_column(name, type(feature)(decode=False))
    return data


def prepare_in_chunks(task, stream: IterableDataset, training: bool) -> IterableDataset:
    """``task.prepare`` applied on the fly to chunks of CHUNK_ROWS rows: the same checks and conversions as
    for in-memory data. An error names the rows of the stream it was found in."""
    stream = undecoded(stream)
    features = stream.features

    def prepare(rows: dict, indices: list[int]) -> dict:
        chunk = Dataset.from_dict(rows, features=features)
        try:
            return task.prepare(chunk, training)[:]
        except DataError as error:
            raise DataError(f"In rows {indices[0]}-{indices[-1]} of the stream (a row number below counts from row "
                            f"{indices[0]}): {error}") from error

    return stream.map(prepare, batched=True, batch_size=CHUNK_ROWS, with_indices=True,
                      remove_columns=column_names(stream))


def check_trainable(stream, max_steps: int | None) -> None:
    if is_stream(stream) and max_steps is None:
        raise TrainingError("Training on a stream (an IterableDataset) needs max_steps=N: a stream has no length "
                            "from which epochs could be counted.")


def for_this_process(stream: IterableDataset, accelerator) -> IterableDataset:
    """This process's part of the stream: whole shards when they divide evenly, else every N-th example."""
    if accelerator.num_processes == 1:
        return stream
    from datasets.distributed import split_dataset_by_node

    return split_dataset_by_node(stream, rank=accelerator.process_index, world_size=accelerator.num_processes)


def send_to(loader, accelerator):
    """The loader's batches on the accelerator's device (Accelerate places them for the loaders it prepares)."""
    from accelerate.utils import send_to_device

    for batch in loader:
        yield send_to_device(batch, accelerator.device)


def batches_in_step(loader, accelerator):
    """The loader's batches, on the accelerator's device, until this process or any other runs out.

    Processes may hold a few more or fewer examples than each other; stopping all at the first that runs
    out keeps them in step (a process that went on alone would wait for the others forever), at the cost
    of at most one batch per process left out of the pass."""
    iterator = send_to(loader, accelerator)
    while True:
        batch = next(iterator, None)
        if accelerator.num_processes > 1:
            has_batch = torch.tensor([batch is not None], device=accelerator.device)
            if not bool(accelerator.gather(has_batch).all()):
                return
        if batch is None:
            return
        yield batch
