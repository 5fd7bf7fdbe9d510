"""What every recipe shares: reading --dataset (a hub name or a local file/folder) into train and evaluation
data, and saying in the recipe's own flags how to resume a run that was interrupted or refused.

Importing it sets that up: when fine-tuning is interrupted (Ctrl-C) or --output-dir holds an earlier run, the
recipe ends with a message that gives the exact command to run (the same one, plus --resume or --overwrite)
instead of a traceback. Every other error keeps its traceback.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from taskzoo.data import EVAL_SPLIT_NAMES
from taskzoo.errors import ExistingRunError, TrainingInterrupted, say_how_to_go_on

SCRIPT = os.path.basename(sys.argv[0])


def load_splits(dataset: str, eval_split: str = "validation", train_split: str = "train", config: str | None = None,
                hub_columns: dict[str, str] | None = None):
    """A local path (a file; a folder of train.* and validation.* / dev.* / test.* files; or a folder of train/
    and validation/ (dev/, test/) folders) or a hub dataset name (needs the network or the datasets cache).
    Returns (train, eval) in any form taskzoo reads; eval is None when there is none, which is said in one line.
    ``hub_columns`` renames a hub dataset's columns to the task's ({"sentence": "text"}); a local folder's
    columns are read as the command line reads them: by the task's own names, unless the recipe's flags rename them."""
    path = Path(dataset)
    held_out_names = dict.fromkeys([eval_split, *EVAL_SPLIT_NAMES])  # in order, once each
    if path.exists():
        if (path / "train").is_dir():  # split folders (train_split names a hub dataset's split)
            train = path / "train"
            held_out = next((path / name for name in held_out_names if (path / name).is_dir()), None)
        elif path.is_dir() and any(path.glob("train.*")):  # split files
            train = next(path.glob("train.*"))
            held_out = next((file for name in held_out_names for file in sorted(path.glob(f"{name}.*"))), None)
        else:  # one file or folder: the task reads it (and its splits, where it has some)
            train, held_out = path, None
        if held_out is None:
            *names, last = held_out_names
            print(f"{SCRIPT}: no evaluation data in {dataset} (no {', '.join(names)} or {last} split): fine-tuning "
                  "without evaluation.", file=sys.stderr)
        return str(train), str(held_out) if held_out else None
    from datasets import load_dataset

    try:
        splits = load_dataset(dataset, config)
    except OSError as error:  # offline (ConnectionError), or no such dataset on the hub
        sys.exit(f"{SCRIPT}: --dataset {dataset} is not a local file or folder, and the Hugging Face hub could not "
                 f"give it ({str(error).splitlines()[0]}). Pass --dataset a local folder instead: train.* and "
                 f"validation.* (or dev.*) files, or train/ and validation/ folders, as the top of {SCRIPT} describes.")
    renames = {old: new for old, new in (hub_columns or {}).items() if old in splits[train_split].column_names}
    splits = splits.rename_columns(renames) if renames else splits
    return splits[train_split], next((splits[name] for name in held_out_names if name in splits), None)


def _say_how_to_resume(kind, error, traceback) -> None:
    """The recipe's exception hook: an interrupted or refused run ends with the commands to run next."""
    if not isinstance(error, (TrainingInterrupted, ExistingRunError)):
        return sys.__excepthook__(kind, error, traceback)
    script = shlex.quote(sys.argv[0])
    say_how_to_go_on(error, SCRIPT, sys.argv[1:], f"python {script}", script)


sys.excepthook = _say_how_to_resume
