"""The one-call public functions: task_names, load, run, finetune, evaluate."""

from __future__ import annotations

import os
from typing import Any

from taskzoo.errors import ModelNotFoundError, TaskzooError, renamed, warn_at_caller
from taskzoo.models import library_bars_hidden, resolve_model, wrong_model
from taskzoo.registry import TASKS, get_task


def task_names() -> list[str]:
    """The names of the registered tasks (aliases are accepted wherever a name is)."""
    return sorted(TASKS)


def tasks() -> list[str]:
    """The old name of :func:`task_names` (it shadowed the package taskzoo.tasks), until the next release."""
    warn_at_caller("taskzoo.tasks() is renamed taskzoo.task_names(); the old name goes in the next release.")
    return task_names()


def load(task: str, model: str | os.PathLike | None = None, *, revision: str | None = None,
         device: str | None = None, trust_remote_code: bool = False, **options):
    """Load a task with a model: a local folder, a packaged-model name, or a hub id (cache first).

    Without ``model`` the task's default checkpoint is used, pinned to its revision.
    """
    from taskzoo.accelerators import check_device

    entry = get_task(task)
    check_device(device)
    if model is None:
        model, revision = entry.default_model, revision or entry.default_revision
    path = resolve_model(model, revision)
    task_class = entry.load_class()
    options = renamed(options, task_class.renamed_options, "load()")
    wrong = wrong_model(path, task_class)  # an image model for a text task, say: told before the loaders fail
    if wrong:
        raise ModelNotFoundError(wrong)
    try:
        with library_bars_hidden():
            return task_class.from_pretrained(path, device=device, trust_remote_code=trust_remote_code, **options)
    except TaskzooError:
        raise
    except (OSError, KeyError, ValueError) as error:
        wrong = wrong_model(path, task_class, error)
        if wrong:
            raise ModelNotFoundError(wrong) from error
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
