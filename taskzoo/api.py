"""The one-call public functions: load, run, finetune, evaluate."""

from __future__ import annotations

import os
from typing import Any

from taskzoo.errors import ModelNotFoundError, TaskzooError
from taskzoo.models import library_bars_hidden, resolve_model
from taskzoo.registry import TASKS, get_task


def tasks() -> list[str]:
    """The names of the registered tasks (aliases are accepted wherever a name is)."""
    return sorted(TASKS)


def load(task: str, model: str | os.PathLike | None = None, *, revision: str | None = None,
         device: str | None = None, trust_remote_code: bool = False, **options):
    """Load a task with a model: a local folder, a packaged-model name, or a hub id (cache first).

    Without ``model`` the task's default checkpoint is used, pinned to its revision. A folder that
    ``zoo.export`` wrote runs with ONNX Runtime (docs/export.md).
    """
    from taskzoo.export import load_export, read_export
    from taskzoo.task import check_device

    entry = get_task(task)
    if model is None:
        model, revision = entry.default_model, revision or entry.default_revision
    if not (os.path.isdir(model) and read_export(model)):  # an ONNX export's device is ONNX Runtime's to check
        check_device(device)
    path = resolve_model(model, revision)
    task_class = entry.load_class()
    exported = read_export(path)
    if exported is not None:  # see taskzoo/export/
        return load_export(task_class, path, exported, device, trust_remote_code=trust_remote_code, **options)
    try:
        with library_bars_hidden():
            return task_class.from_pretrained(path, device=device, trust_remote_code=trust_remote_code, **options)
    except TaskzooError:
        raise
    except (OSError, KeyError, ValueError) as error:
        if isinstance(error, ValueError) and "Unrecognized configuration class" not in str(error):
            raise  # a bad option (an unknown language code, say), not a folder of the wrong kind
        # The library loaders' messages for a folder of the wrong kind are long and indirect: say it plainly,
        # keeping their first line (and the chained exception) for the details.
        detail = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise ModelNotFoundError(f"{path} does not hold a model that {entry.name} can load ({detail}).") from error


def run(task: str, inputs: Any, model: str | os.PathLike | None = None, **options):
    """Load and predict in one call: ``taskzoo.run("text-classification", ["great!"], model=...)``."""
    load_options = {k: options.pop(k) for k in ("revision", "device", "trust_remote_code") if k in options}
    return load(task, model, **load_options).predict(inputs, **options)


def finetune(task: str, model: str | os.PathLike | None = None, train: Any = None, eval: Any = None,
             **config):
    """Load ``model`` for ``task`` and fine-tune it; returns the TrainingResult (``.task`` is the model).

    ``config`` is what ``Task.finetune`` takes, ``metrics=[...]`` (your own metrics) and ``columns`` included."""
    if train is None:
        raise ValueError("finetune() needs train= data.")
    zoo = load(task, model)
    columns = config.pop("columns", None)
    return zoo.finetune(train, eval=eval, columns=columns, **config)


def evaluate(task: str, model: str | os.PathLike | None = None, data: Any = None, metrics: Any = None,
             **options) -> dict[str, float]:
    """Load ``model`` for ``task`` and evaluate it on ``data``, with your own ``metrics`` next to the task's."""
    if data is None:
        raise ValueError("evaluate() needs data=.")
    return load(task, model).evaluate(data, metrics=metrics, **options)
