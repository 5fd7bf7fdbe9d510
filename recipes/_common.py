"""What every recipe shares: reading --dataset (a hub name or a local file/folder) into a DatasetDict."""

from __future__ import annotations

from pathlib import Path


def load_splits(dataset: str, eval_split: str = "validation", train_split: str = "train", config: str | None = None):
    """A hub dataset name (needs network or the datasets cache) or a local path (file, folder, or a folder
    with train.* and validation.* files). Returns (train, eval) in any format taskzoo reads."""
    path = Path(dataset)
    if (path / "train").is_dir():  # split folders: train/ and validation/ (or test/)
        held_out = next((path / name for name in (eval_split, "test") if (path / name).is_dir()), None)
        return str(path / "train"), str(held_out) if held_out else None
    if path.is_dir() and any(path.glob("train.*")):
        train = next(path.glob("train.*"))
        held_out = next(iter(sorted(path.glob(f"{eval_split}.*")) or sorted(path.glob("test.*"))), None)
        return str(train), str(held_out) if held_out else None
    if path.exists():
        return str(path), None
    from datasets import load_dataset

    splits = load_dataset(dataset, config)
    return splits[train_split], splits[eval_split] if eval_split in splits else splits.get("test")
