"""Prediction at scale: rows in, one JSON line per row out, in input order, resumable, over N processes.

Rows come from a data file or folder (streamed where the format allows, so a file larger than memory
works), a Dataset or IterableDataset, or a list. Each row becomes a predict input through the task's
``input_of(row)``. Predictions are written block by block, each block flushed and synced with its row
indices, so a killed run loses one block at most and ``resume=True`` continues after the last complete
line (a half-written last line is dropped).

Under N processes (``accelerate launch`` / ``torchrun``) process r predicts rows r, r+N, r+2N, ... into a
part file of its own; at the end the main process merges the parts into the one output file (see
result_files.py). A 1-process run writes the output file directly.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Any

from taskzoo import data as data_utils, streaming
from taskzoo.errors import DataError
from taskzoo.result_files import OutputFiles, json_line

# Table files read as streams; other files (a .json document, COCO) and folders go through the task's reader.
STREAMED_TABLES = {".csv": ("csv", {}), ".tsv": ("csv", {"sep": "\t"}), ".jsonl": ("json", {}),
                   ".parquet": ("parquet", {})}
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
DATA_SUFFIXES = (*STREAMED_TABLES, ".json")
RECORD_KEYS = ("index", "input", "output", "visual")  # what a line holds besides the id column


# ------------------------------------------------------------------------------------------- the rows
class Rows:
    """A task's predict inputs from rows: ``take(start, step)`` yields ``(index, fields, input, columns)`` for
    rows start, start+step, ...; ``fields`` are what the output line keeps (the id column), ``columns`` the
    columns the input came from (named when it turns out to be bad)."""

    def __init__(self, task, data: Any, columns: Mapping[str, str] | None = None, id_column: str | None = None):
        if id_column in RECORD_KEYS:
            raise DataError(f"The id column cannot be called {id_column!r}: each line has its own {id_column!r}.")
        self.task, self.columns = task, dict(columns or {})
        self.name = str(data) if isinstance(data, (str, os.PathLike)) else "the data"
        self.rows, self.folder = _open(task, data)
        self.total = len(self.rows) if hasattr(self.rows, "__len__") else None
        self.id_column, self.id_required = id_column or "id", id_column is not None
        self.resolved: set[str] | None = None  # input columns of relative file paths, decided on the first row

    def take(self, start: int, step: int) -> Iterator[tuple[int, dict, Any, list[str]]]:
        if self.total is not None:  # random access: skip without reading
            rows = ((index, self.rows[index]) for index in range(start, self.total, step))
        else:
            rows = islice(enumerate(self.rows), start, None, step)
        first = True
        for index, row in rows:
            if first:
                self._check_columns(row)
                first = False
            yield index, self._fields(row), *self._input(index, row)

    def _check_columns(self, row: Mapping) -> None:
        missing = [name for name in self.columns if name not in row]
        if self.id_required and self.id_column not in row:
            missing.append(self.id_column)
        if missing:
            raise DataError(f"{self.name} has no column {missing[0]!r} (asked for by columns= or the id column); "
                            f"its columns: {list(row)}.")

    def _fields(self, row: Mapping) -> dict:
        return {self.id_column: row[self.id_column]} if self.id_column in row else {}

    def _input(self, index: int, row: Mapping):
        if self.columns:  # {yours: the task's}; a column of the task's name that is replaced goes
            renamed = {key: value for key, value in row.items() if key not in self.columns.values()}
            row = {**renamed, **{new: row[old] for old, new in self.columns.items()}}
        row = _Watched(row)
        try:
            item = self.task.input_of(row)
        except KeyError as error:
            column = error.args[0]
            raise DataError(f"Row {index} of {self.name} has no column {column!r}, which {self.task.name} predicts "
                            f"from; its columns: {list(row)}. Rename yours with columns={{'yours': {column!r}}}."
                            ) from None
        read = [column for column in dict.fromkeys(row.read) if column in row]
        parts = item if isinstance(item, tuple) else (item,)
        if any(part is None for part in parts):
            empty = [column for column in read if row[column] is None]
            raise DataError(f"Row {index} of {self.name} has no value in column {' / '.join(map(repr, empty))}.")
        if self.folder is not None:
            item = self._resolve(row, read, item)
        return item, read

    def _resolve(self, row: Mapping, read: list[str], item):
        """File paths in a table are relative to its folder (as finetune reads them): an input column whose
        first value names a file there is resolved in every row."""
        if self.resolved is None:
            self.resolved = {column for column in read if _relative_file(row[column], self.folder)}
        if not self.resolved:
            return item
        resolved = {column: str(self.folder / row[column]) if _relative_file(row[column]) else row[column]
                    for column in self.resolved}
        return self.task.input_of({**row, **resolved})


class _Watched(dict):
    """A row that notes which columns ``input_of`` reads, so that errors can name them."""

    def __init__(self, row: Mapping):
        super().__init__(row)
        self.read: list[str] = []

    def __getitem__(self, key):
        self.read.append(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.append(key)
        return super().get(key, default)


def _relative_file(value, folder: Path | None = None) -> bool:
    return isinstance(value, str) and not os.path.isabs(value) and (folder is None or (folder / value).is_file())


def _open(task, data):
    """``data`` -> (rows: an indexable Dataset or list, or an iterable stream; the folder of a streamed table)."""
    from datasets import DatasetDict, IterableDatasetDict

    folder = None
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        media = _media_files(path) if path.is_dir() else []
        if path.is_file() and path.suffix.lower() in STREAMED_TABLES and path.name not in data_utils.METADATA_FILES:
            from datasets import load_dataset

            builder, options = STREAMED_TABLES[path.suffix.lower()]
            data, folder = load_dataset(builder, data_files=str(path), split="train", streaming=True,
                                        **options), path.parent
        elif media:  # a plain folder of images or audio files: one row per file, its name as id
            data = [{"id": file.name, "audio" if file.suffix.lower() in AUDIO_SUFFIXES else "image": str(file)}
                    for file in media]
        else:
            data = task.read_path(path)
    if isinstance(data, (DatasetDict, IterableDatasetDict)):
        raise DataError(f"The data has splits {list(data)}: predict on one of them (its folder, or data['test']).")
    if isinstance(data, Mapping) or type(data).__name__ == "DataFrame":
        data = data_utils.to_dataset(data)
    return streaming.undecoded(data), folder


def _media_files(folder: Path) -> list[Path]:
    """The image and audio files of a folder that holds nothing else a reader would take (tables, COCO)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if any(p.suffix.lower() in DATA_SUFFIXES for p in files):
        return []
    return [p for p in files if p.suffix.lower() in (*data_utils.IMAGE_SUFFIXES, *AUDIO_SUFFIXES)]


# ------------------------------------------------------------------------------------ predict to file
class Inputs:
    """Plain predict inputs (the command line's arguments or --input-file): each line keeps its input."""

    name = "the inputs"

    def __init__(self, items: list):
        self.items, self.total = list(items), len(items)

    def take(self, start: int, step: int) -> Iterator[tuple[int, dict, Any, list[str]]]:
        for index in range(start, self.total, step):
            yield index, {"input": self.items[index]}, self.items[index], []


def predict_to_jsonl(task, data, output: str | os.PathLike, *, batch_size: int | None = None,
                     columns: Mapping[str, str] | None = None, id_column: str | None = None, resume: bool = False,
                     save_visuals: str | os.PathLike | None = None, progress: bool | None = None,
                     **options) -> Path:
    """Predict every row of ``data`` into ``output``, one JSON line per row in input order
    (see Task.predict_to_jsonl)."""
    return write_predictions(task, Rows(task, data, columns, id_column), output, batch_size=batch_size,
                             resume=resume, save_visuals=save_visuals, progress=progress, **options)


def write_predictions(task, rows: Rows | Inputs, output: str | os.PathLike, *, batch_size: int | None = None,
                      resume: bool = False, save_visuals: str | os.PathLike | None = None,
                      progress: bool | None = None, **options) -> Path:
    """The one loop: this process's rows -> predict a block -> append its lines, flushed and synced."""
    from tqdm.auto import tqdm

    from taskzoo.accelerators import new_accelerator

    accelerator = new_accelerator()  # it refuses a launch of several processes that is not distributed
    rank, world = accelerator.process_index, accelerator.num_processes
    block_rows = max(256, 8 * task.check_batch_size(batch_size))
    files = OutputFiles(Path(output), rank, world)
    accelerator.wait_for_everyone()  # each process has looked at the output (the command line refuses one) first
    if accelerator.is_main_process:
        done = files.start(resume)  # before the other processes read what is there
        if resume:
            of = f" of {rows.total}" if rows.total is not None else ""
            print(f"resuming: {done}{of} inputs already in {output}", file=sys.stderr)
    accelerator.wait_for_everyone()
    start = files.first_row() if resume else rank
    if world > 1 and task.device != accelerator.device:  # one device per process (GPUs)
        task.model.to(accelerator.device)
        task.device = accelerator.device
    mine = len(range(rank, rows.total, world)) if rows.total is not None else None
    bar = tqdm(total=mine, initial=len(range(rank, start, world)), unit="row", dynamic_ncols=True,
               desc=f"{task.name}: predict" + (f" (process {rank + 1} of {world})" if world > 1 else ""),
               disable=not accelerator.is_local_main_process or (None if progress is None else not progress))
    with open(files.mine, "a", encoding="utf-8") as handle, _each_warning_once():
        for block in _chunks(rows.take(start, world), block_rows):
            outputs = _predict_block(task, rows.name, block, batch_size, options)
            handle.write("".join(json_line(task, index, fields, item, out, save_visuals)
                                 for (index, fields, item, _), out in zip(block, outputs)))
            handle.flush()
            os.fsync(handle.fileno())
            bar.update(len(block))
    bar.close()
    accelerator.wait_for_everyone()
    # The others return now: a merge of a large output may outlast the process group's barrier timeout.
    if world > 1 and accelerator.is_main_process:
        files.merge()
    return Path(output)


def _chunks(iterator: Iterator, size: int) -> Iterator[list]:
    while chunk := list(islice(iterator, size)):
        yield chunk


def _predict_block(task, name: str, block: list, batch_size: int | None, options: dict) -> list:
    """Outputs for a block of rows. Kinds of input (texts, text pairs) are predicted apart, since predict
    refuses to mix them; a row that predict refuses is named in the error."""
    groups: dict[str, list[int]] = {}
    for position, (_, _, item, _) in enumerate(block):
        groups.setdefault(task.input_kind(item), []).append(position)
    outputs = [None] * len(block)
    for positions in groups.values():
        try:
            results = task.predict([block[p][2] for p in positions], batch_size=batch_size, progress=False,
                                   **options)
        except (ValueError, TypeError, KeyError):
            _raise_for_bad_row(task, name, [block[p] for p in positions], batch_size, options)
            raise
        for position, result in zip(positions, results):
            outputs[position] = result
    return outputs


def _raise_for_bad_row(task, name: str, block: list, batch_size: int | None, options: dict) -> None:
    """A block failed: the first row that fails on its own is named, with its row number and column."""
    for index, _, item, columns in block:
        try:
            task.predict([item], batch_size=batch_size, progress=False, **options)
        except (ValueError, TypeError, KeyError) as error:
            where = f" (column {' / '.join(map(repr, columns))})" if columns else ""
            raise DataError(f"Row {index} of {name}{where}: {error}") from error


@contextmanager
def _each_warning_once():
    """Each block's predict warns on its own (say, about truncated inputs): show each warning once per run,
    numbers aside, instead of once per block."""
    with warnings.catch_warnings():
        shown, show = set(), warnings.showwarning

        def once(message, category, *args, **kwargs):
            key = (category, re.sub(r"\d+", "#", str(message)))
            if key not in shown:
                shown.add(key)
                show(message, category, *args, **kwargs)
        warnings.showwarning = once
        yield
