"""Loading and checking user data: formats, column mapping, splits, labels and images; batches of rows of
similar length (LengthGroupedSampler). Audio: audio.py; streams: streaming.py.

Everything here refuses bad input with a message that names the column, file or value, before any
training starts, rather than silently fixing it.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, DatasetDict, Image as ImageFeature

from taskzoo import streaming
from taskzoo.errors import DataError

TABLE_READERS = {
    ".csv": Dataset.from_csv,
    ".tsv": lambda path: Dataset.from_csv(path, sep="\t"),
    ".json": Dataset.from_json,
    ".jsonl": Dataset.from_json,
    ".parquet": Dataset.from_parquet,
}
EVAL_SPLIT_NAMES = ("validation", "valid", "val", "eval", "dev", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def read_table(path: str | os.PathLike) -> Dataset:
    """Read a CSV, TSV, JSON, JSONL or Parquet file into a Dataset."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"Data file {path} does not exist.")
    reader = TABLE_READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(
            f"Cannot read {path}: unknown format {path.suffix!r}. "
            f"Use one of {', '.join(TABLE_READERS)} or a folder the task understands."
        )
    try:
        return reader(str(path))
    except Exception as error:  # re-raised with the file named
        raise DataError(f"Could not read {path}: {error}") from error


def to_dataset(data: Any, read_path=read_table) -> Dataset | DatasetDict:
    """Turn a Dataset, DatasetDict, path, list of dicts or dict of lists into a datasets object.

    ``read_path`` reads paths; tasks pass their own to accept folders (images, audio, COCO). A stream
    (``IterableDataset``, e.g. ``load_dataset(..., streaming=True)``) is kept as it is (see streaming.py).
    """
    if isinstance(data, (Dataset, DatasetDict)) or streaming.is_stream(data):
        return data
    if isinstance(data, (str, os.PathLike)):
        return read_path(data)
    if isinstance(data, Mapping):
        return _from_python(Dataset.from_dict, dict(data))
    if isinstance(data, Sequence) and all(isinstance(row, Mapping) for row in data):
        if not data:
            raise DataError("The data is an empty list.")
        return _from_python(Dataset.from_list, list(data))
    if type(data).__name__ == "DataFrame":
        return Dataset.from_pandas(data, preserve_index=False)
    raise DataError(
        f"Cannot use data of type {type(data).__name__}: pass a datasets.Dataset, a DatasetDict, "
        "an IterableDataset, a file path (CSV, JSON, JSONL, Parquet), a folder, or a list of dicts."
    )


def _from_python(build, rows) -> Dataset:
    import pyarrow

    try:
        return build(rows)
    except (pyarrow.ArrowInvalid, pyarrow.ArrowTypeError) as error:
        raise DataError(f"The rows do not form a table (a column mixes types?): {error}") from error


def pick_split(data, role: str):
    """The split of a (streamed) DatasetDict for ``role`` ("train" or "eval"); a single dataset is returned as is."""
    if not isinstance(data, (DatasetDict, streaming.IterableDatasetDict)):
        return data
    names = ("train",) if role == "train" else EVAL_SPLIT_NAMES
    for name in names:
        if name in data:
            return data[name]
    if role == "train":
        raise DataError(f"The DatasetDict has no 'train' split; its splits are {list(data)}.")
    return None


def rename_columns(dataset: Dataset, columns: Mapping[str, str] | None) -> Dataset:
    """Apply a ``{your_column: task_column}`` mapping, checking that each source column exists."""
    if not columns:
        return dataset
    present = column_names(dataset)
    missing = [name for name in columns if name not in present]
    if missing:
        raise DataError(
            f"columns= maps {missing} but the data has no such column. "
            f"Columns present: {present}."
        )
    renames = {old: new for old, new in columns.items() if old != new}
    clashes = [new for new in renames.values() if new in present and new not in renames]
    if clashes:
        dataset = dataset.remove_columns(clashes)
    return dataset.rename_columns(renames)


def check_columns(dataset: Dataset, required: Sequence[str], task: str, where: str = "data") -> None:
    """Raise if the dataset is empty or lacks a required column, listing the columns it has."""
    if isinstance(dataset, Dataset) and len(dataset) == 0:
        raise DataError(f"The {where} for {task} is empty.")
    present = column_names(dataset)  # a stream that yields nothing is refused here
    missing = [name for name in required if name not in present]
    if missing:
        raise DataError(
            f"The {where} for {task} has no column {missing[0]!r} (required: {list(required)}). "
            f"Columns present: {present}. "
            f"Rename yours with columns={{'your_column': {missing[0]!r}}}."
        )


def column_names(dataset) -> list[str]:
    """The columns of a Dataset or of a stream (whose first row tells, where it declares no features)."""
    return streaming.column_names(dataset) if streaming.is_stream(dataset) else dataset.column_names


METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")


def read_metadata_folder(path: str | os.PathLike, column: str, example: str = "") -> Dataset | DatasetDict:
    """Media files (images, audio) and their columns, laid out as for datasets' imagefolder/audiofolder: a folder
    with metadata.jsonl, .csv or .parquet (a ``file_name`` column plus the task's), a folder of split folders
    (train/, validation/) holding one each (a DatasetDict), or a table (CSV, JSONL, Parquet) whose relative file
    names are taken from its own folder. The files become paths in ``column``; missing ones are refused, naming one.

    Read here rather than by ``load_dataset("audiofolder")``, which encodes every file through torchcodec (it does
    not import beside the CPU build of torch), so that images and audio share one reader: for these layouts
    imagefolder would only read the same metadata table and join the same paths, through an Arrow cache."""
    path = Path(path)
    if not path.is_dir() and path.name not in METADATA_FILES:
        table = read_table(path)
        if "file_name" in table.column_names and column not in table.column_names:
            table = table.rename_column("file_name", column)  # the imagefolder/audiofolder convention
        return resolve_paths(table, path.parent)
    folder = path if path.is_dir() else path.parent
    metadata = next((folder / name for name in METADATA_FILES if (folder / name).exists()), None)
    if metadata is None:
        splits = {sub.name: sub for sub in sorted(folder.iterdir())
                  if any((sub / name).exists() for name in METADATA_FILES)}
        if not splits:
            raise DataError(f"Folder {folder} has no {' or '.join(METADATA_FILES)} (one row per file"
                            + (f", such as {example}" if example else "") + ").")
        return DatasetDict({name: read_metadata_folder(sub, column, example) for name, sub in splits.items()})
    rows = read_table(metadata)
    if "file_name" not in rows.column_names:
        raise DataError(f"{metadata} has no 'file_name' column; its columns: {rows.column_names}.")
    files = [str(folder / name) for name in rows["file_name"]]
    missing = [file for file in files if not os.path.exists(file)]
    if missing:
        raise DataError(f"{metadata} names {len(missing)} missing file(s), e.g. {missing[0]}.")
    return rows.add_column(column, files).remove_columns("file_name")


def read_class_folders(path: Path) -> Dataset:
    """One sub-folder of images per class, read by datasets' imagefolder: ``image`` (undecoded) and a ClassLabel
    ``label`` named after the folders, sorted. Images one level down only, given as data_files: from a data_dir,
    imagefolder takes a folder named like a split ("train", "test") for one, and would drop the other classes."""
    import glob

    from datasets import load_dataset

    from taskzoo.models import library_bars_hidden

    folders = [sub.name for sub in sorted(path.iterdir()) if sub.is_dir() and not sub.name.startswith(".")]
    try:
        with library_bars_hidden():
            dataset = load_dataset("imagefolder", data_files={"train": f"{glob.escape(str(path))}/*/*"},
                                   drop_labels=False, split="train")
        names = dataset.features["label"].names
    except (FileNotFoundError, ValueError):  # no image in any of them
        names = []
    empty = [name for name in folders if name not in names]
    if empty:
        raise DataError(f"Class folder {path / empty[0]} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    return dataset.cast_column("image", ImageFeature(decode=False))


class LengthGroupedSampler(torch.utils.data.Sampler):
    """A random order whose batches hold rows of similar length, so they pad little: shuffle, cut into
    chunks of 16 batches, sort each chunk by length, cut it into batches, then shuffle the batches (a
    short last batch stays last, keeping the loader's batch boundaries). The order depends only on
    (seed, epoch), so a resumed run and every process see the same one (Accelerate calls set_epoch)."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed, self.epoch = lengths, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order, size = torch.randperm(len(self.lengths), generator=generator).tolist(), self.batch_size
        batches = []
        for start in range(0, len(order), 16 * size):
            chunk = sorted(order[start:start + 16 * size], key=lambda i: -self.lengths[i])
            batches += [chunk[i:i + size] for i in range(0, len(chunk), size)]
        short = [batches.pop()] if batches and len(batches[-1]) < size else []
        for index in [*torch.randperm(len(batches), generator=generator).tolist()]:
            yield from batches[index]
        for batch in short:
            yield from batch


# ----------------------------------------------------------------------------------------------- labels


def label_names_of(dataset: Dataset, column: str) -> list[str] | None:
    """Label names when the column is a ClassLabel or holds strings; None for plain integers."""
    feature = dataset.features[column]
    if hasattr(feature, "names"):
        return list(feature.names)
    values = dataset.unique(column)
    if all(isinstance(value, str) for value in values):
        return sorted(values)
    if not all(isinstance(value, (int, np.integer)) and not isinstance(value, bool) for value in values):
        raise DataError(f"Column {column!r} must hold strings or integers; found {values[:5]}.")
    return None


def encode_labels(dataset: Dataset, column: str, label2id: Mapping[str, int]) -> Dataset:
    """Map labels to the model's ids: names (strings or ClassLabel) by name, integers checked by range."""
    feature = dataset.features[column]
    values = dataset[column][:]  # one read (iterating datasets' Column reads it row by row, 100x slower)
    if hasattr(feature, "names"):  # ClassLabel: compare by name, since ids may be ordered differently
        values = [feature.names[value] for value in values]
    num_labels = len(label2id)
    unknown = {
        str(value)
        for value in values
        if (value not in label2id if isinstance(value, str) else not 0 <= int(value) < num_labels)
    }
    if unknown:
        raise DataError(
            f"Column {column!r} has labels the model does not know: {sorted(unknown)[:10]}. "
            f"The model's labels are {list(label2id)}."
        )
    ids = [label2id[value] if isinstance(value, str) else int(value) for value in values]
    # Added beside the old column before it goes: a table whose only column is removed loses its rows.
    return dataset.add_column(f"{column}__ids", ids).remove_columns(column).rename_column(f"{column}__ids", column)


# ----------------------------------------------------------------------------------------------- images


def cast_images(dataset: Dataset, column: str) -> Dataset:
    """Keep datasets' Image columns undecoded, so that data.load_image decodes them and names a broken file."""
    if isinstance(dataset.features[column], ImageFeature) and dataset.features[column].decode:
        return dataset.cast_column(column, ImageFeature(decode=False))
    if is_text(dataset.features[column]):
        missing = [p for p in dataset[column] if p is None or not Path(p).is_file()]
        if missing:
            raise DataError(f"Image file {missing[0]} does not exist ({len(missing)} missing in column {column!r}).")
    return dataset


def is_text(feature) -> bool:
    return getattr(feature, "dtype", None) in ("string", "large_string")  # CSV columns read as large_string


def resolve_paths(dataset: Dataset, folder: Path) -> Dataset:
    """Relative file paths in a CSV/JSONL are taken relative to the file's folder: each text column whose
    first value names a file there (any column: columns= may rename it to image or mask afterwards)."""
    if not len(dataset):
        return dataset
    first = dataset[0]
    columns = [c for c in dataset.column_names if is_text(dataset.features[c]) and isinstance(first[c], str)
               and not os.path.isabs(first[c]) and (folder / first[c]).is_file()]

    def resolve(row):
        return {c: str(folder / row[c]) if isinstance(row[c], str) and not os.path.isabs(row[c]) else row[c]
                for c in columns}
    return dataset.map(resolve, desc="Resolving file paths") if columns else dataset


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def open_image_file(value, kind: str = "Image"):
    """Decode an image file (a path, a BytesIO, or datasets' undecoded ``{"bytes", "path"}``) into a PIL
    image now, so that a missing, truncated or non-image file fails here with its name."""
    from PIL import Image, UnidentifiedImageError

    source = str(value) if isinstance(value, (str, os.PathLike)) else f"<{kind.lower()} bytes>"
    if isinstance(value, Mapping):
        source = value.get("path") or source
        value = io.BytesIO(value["bytes"]) if value.get("bytes") else value.get("path")
    try:
        with Image.open(value) as opened:
            opened.load()
            return opened.copy()
    except FileNotFoundError as error:
        raise DataError(f"{kind} file {source} does not exist.") from error
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise DataError(f"{kind} {source} is corrupted or not an image: {error}") from error


def load_image(image: Any):
    """A PIL RGB image from a PIL image, a path, a numpy array or a datasets image dict."""
    from PIL import Image

    if isinstance(image, (Mapping, str, os.PathLike, io.BytesIO)):
        image = open_image_file(image)
    elif isinstance(image, np.ndarray):
        array = image
        if array.dtype != np.uint8:
            array = np.clip(array * (255 if array.max() <= 1.0 else 1), 0, 255).astype(np.uint8)
        if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
            array = array.transpose(1, 2, 0)  # channels-first to channels-last
        image = Image.fromarray(array.squeeze(-1) if array.ndim == 3 and array.shape[-1] == 1 else array)
    if not isinstance(image, Image.Image):
        raise DataError(f"Expected an image (PIL image, path or array); got {type(image).__name__}.")
    return image if image.mode == "RGB" else image.convert("RGB")


def image_size(image: Any) -> tuple[int, int]:
    """(width, height): from the header alone of a file (path, BytesIO, datasets' undecoded image), else decoded."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.size
    source = image if not isinstance(image, Mapping) else (  # datasets' undecoded image
        io.BytesIO(image["bytes"]) if image.get("bytes") else image.get("path"))
    if isinstance(source, (str, os.PathLike, io.BytesIO)):
        try:
            with Image.open(source) as opened:
                return opened.size
        except (OSError, ValueError, SyntaxError):  # not an image: load_image below says so, naming the file
            pass
    return load_image(image).size


def png_base64(image, data_url: bool = False) -> str:
    """A PIL image as base64 PNG (lossless); ``data_url``: as a ``data:image/png;base64,...`` URL."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return ("data:image/png;base64," if data_url else "") + base64.b64encode(buffer.getvalue()).decode("ascii")


def is_image(value: Any) -> bool:  # a PIL image? (told without importing PIL)
    return hasattr(value, "save") and hasattr(value, "size") and hasattr(value, "mode")
