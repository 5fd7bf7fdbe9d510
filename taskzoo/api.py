"""The one-call public functions: task_names, load, run, finetune, evaluate."""

from __future__ import annotations

import os
from typing import Any

from taskzoo.errors import ModelNotFoundError, TaskzooError, renamed, warn_at_caller
from taskzoo.models import library_bars_hidden, resolve_model, wrong_model
from taskzoo.registry import TASKS, get_task


def task_names() -> list[str]:
    """The names of the registered tasks.

    Returns:
        The names, sorted. Their aliases (``"sentiment-analysis"``, ``"asr"``, ...) are accepted wherever a
        name is.
    """
    return sorted(TASKS)


def tasks() -> list[str]:
    """The old name of :func:`task_names` (it shadowed the package taskzoo.tasks), until the next release."""
    warn_at_caller("taskzoo.tasks() is renamed taskzoo.task_names(); the old name goes in the next release.")
    return task_names()


def load(task: str, model: str | os.PathLike | None = None, *, revision: str | None = None,
         device: str | None = None, trust_remote_code: bool = False, **options):
    """Load a task with a model, ready to predict, evaluate, fine-tune and save.

    Args:
        task: A task name or alias (see ``taskzoo.task_names()``), such as ``"text-classification"``.
        model: A local folder, a packaged-model name (``"all-MiniLM-L6-v2"``) or a hub id (the local cache is
            looked in first). None: the task's default checkpoint, pinned to its revision.
        revision: The hub revision (branch, tag or commit) of ``model``.
        device: Where the model runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``). None: a CUDA GPU if
            torch sees one, else the CPU.
        trust_remote_code: Let transformers run code that ships in the model's folder.
        **options: The task's own loading options (speech recognition's ``language``, text-to-image's
            ``resolution``, ...; see the task's page in docs/tasks/).

    Returns:
        The loaded task: an instance of the task's class, a :class:`taskzoo.task.Task`.

    Raises:
        UnknownTaskError: ``task`` is neither a registered name nor an alias.
        ModelNotFoundError: ``model`` was found nowhere, or holds a kind of model the task cannot load.
        ValueError: ``device`` is not one torch can use here, or an option has a bad value.

    A folder that ``zoo.export`` wrote runs with ONNX Runtime (docs/export.md).
    """
    from taskzoo.accelerators import check_device
    from taskzoo.export import load_export, read_export

    entry = get_task(task)
    if model is None:
        model, revision = entry.default_model, revision or entry.default_revision
    if not (os.path.isdir(model) and read_export(model)):  # an ONNX export's device is ONNX Runtime's to check
        check_device(device)
    path = resolve_model(model, revision)
    task_class = entry.load_class()
    options = renamed(options, task_class.renamed_options, "load()")
    exported = read_export(path)
    if exported is not None:  # see taskzoo/export/
        return load_export(task_class, path, exported, device, trust_remote_code=trust_remote_code, **options)
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
    """Load and predict in one call: ``taskzoo.run("text-classification", ["great!"], model=...)``.

    Args:
        task: A task name or alias.
        inputs: One input, or a list of inputs (see ``Task.predict``).
        model: As for :func:`load`.
        **options: ``revision``, ``device`` and ``trust_remote_code`` go to :func:`load`; the rest to
            ``Task.predict`` (``batch_size``, ``top_k``, ...).

    Returns:
        One output for one input, a list of outputs for a list.

    Raises:
        UnknownTaskError: ``task`` is not registered.
        ModelNotFoundError: ``model`` cannot be loaded for ``task``.
        ValueError: An input or an option is refused (the message names it).
    """
    load_options = {k: options.pop(k) for k in ("revision", "device", "trust_remote_code") if k in options}
    return load(task, model, **load_options).predict(inputs, **options)


def finetune(task: str, model: str | os.PathLike | None = None, train: Any = None, eval: Any = None,
             **config):
    """Load ``model`` for ``task`` and fine-tune it, as ``taskzoo.load(task, model).finetune(train, ...)``.

    Args:
        task: A task name or alias.
        model: As for :func:`load`.
        train: The training data: a ``datasets.Dataset`` or ``DatasetDict``, a file or folder path, or a list
            of dicts (see ``Task.finetune``).
        eval: Data to evaluate on during and after training; None: a DatasetDict's validation (or test) split,
            if any.
        **config: What ``Task.finetune`` takes: the fields of ``TrainingConfig`` (``epochs``,
            ``learning_rate``, ``output_dir``, ``metrics``, ...), the task's ``finetune_options`` and
            ``columns``.

    Returns:
        The ``TrainingResult``; its ``.task`` is the fine-tuned task.

    Raises:
        ValueError: No ``train`` data, or an option with a bad value.
        TypeError: An option that neither ``TrainingConfig`` nor the task has (the message suggests one).
        DataError: The data cannot be used (a missing column, an empty set, a bad value).
        ExistingRunError: ``output_dir`` holds an earlier run; resume it or pass ``overwrite=True``.
        TrainingError: Fine-tuning cannot go on (the loss became NaN, say).
    """
    if train is None:
        raise ValueError("finetune() needs train= data.")
    zoo = load(task, model)
    columns = config.pop("columns", None)
    return zoo.finetune(train, eval=eval, columns=columns, **config)


def evaluate(task: str, model: str | os.PathLike | None = None, data: Any = None, metrics: Any = None,
             **options) -> dict[str, float]:
    """Load ``model`` for ``task`` and evaluate it on ``data``, with your own ``metrics`` next to the task's.

    Args:
        task: A task name or alias.
        model: As for :func:`load`.
        data: Labelled data, in any form ``Task.evaluate`` takes.
        metrics: Your own metrics: a function ``(predictions, references) -> {name: number}``, an ``evaluate``
            module, a metric script's path, or a list or ``{prefix: metric}`` dict of those
            (:mod:`taskzoo.custom_metrics`).
        **options: ``Task.evaluate``'s ``batch_size``, ``columns`` and ``mixed_precision``.

    Returns:
        ``{metric name: value}``, the task's primary metric included.

    Raises:
        ValueError: No ``data``.
        DataError: The data cannot be used for the task.
        MetricError: One of your metrics failed (the message names it).
    """
    if data is None:
        raise ValueError("evaluate() needs data=.")
    return load(task, model).evaluate(data, metrics=metrics, **options)
