"""Your own metrics, scored next to a task's built-in ones by ``evaluate(metrics=...)`` and ``finetune(metrics=...)``.

A metric is one of:

- a callable ``(predictions, references) -> {name: number}`` (or a single number, named after the callable);
- a Hugging Face ``evaluate`` module (``EvaluationModule`` or ``CombinedEvaluations``), called as
  ``module.compute(predictions=..., references=...)``;
- a string: a local metric script or folder (``evaluate.load(path)`` works offline), or the name of an
  ``evaluate`` metric, which loads only where the hub or its cache is reachable.

``metrics`` is a list of those, or a dict ``{prefix: metric}`` whose results are named ``prefix_key`` (a single
number: ``prefix``), to keep apart two metrics that report the same key. What a metric receives is the task's
``metric_inputs`` (each task's page says what). Results are merged into the task's metrics dict; values that
are not numbers (a per-sample list, a hash string) are left out with a warning.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from taskzoo.errors import TaskzooError, TaskzooWarning


class MetricError(TaskzooError, RuntimeError):
    """One of your metrics failed in ``evaluate()``; ``.metrics`` holds everything that was computed."""

    def __init__(self, message: str, metrics: dict[str, float], failures: dict[str, str]):
        super().__init__(message)
        self.metrics, self.failures = metrics, failures


@dataclass
class Evaluation:
    """One evaluation's scores, with what went wrong and where each of your metrics' keys came from."""

    metrics: dict[str, float]
    failures: dict[str, str] = field(default_factory=dict)  # metric name -> "ErrorType: message"
    sources: dict[str, str] = field(default_factory=dict)  # result key -> the name of the metric that gave it

    def failure_text(self) -> str:
        return "; ".join(f"{name}: {error}" for name, error in self.failures.items())


def is_module(metric: Any) -> bool:
    """An ``evaluate`` module (or anything else with ``compute(predictions=, references=)``)."""
    return callable(getattr(metric, "compute", None)) and not isinstance(metric, type)


def load_metric(spec: str | os.PathLike):
    """A metric string -> an ``evaluate`` module: a local script or folder, else a name for the hub or its cache."""
    try:
        import evaluate
    except ImportError as error:
        raise ImportError(f"Metric {str(spec)!r} is loaded with the evaluate package, which is not installed: "
                          "pip install 'taskzoo[metrics]'.") from error
    path = Path(spec)
    if path.exists():
        return evaluate.load(str(path.resolve()))
    if path.suffix == ".py" or os.sep in str(spec):
        raise ValueError(f"Metric {str(spec)!r}: no such metric script or folder.")
    try:
        return evaluate.load(str(spec))
    except Exception as error:  # evaluate raises many kinds when the hub is out of reach
        raise ValueError(f"Could not load the evaluate metric {str(spec)!r}: it is not a local script or folder, "
                         "and a name loads only from the Hugging Face hub or its cache "
                         f"({type(error).__name__}: {str(error)[:200]}). Pass the path of a local metric "
                         "script instead.") from error


class CustomMetric:
    """One metric of yours, with the name that reports and failures use."""

    def __init__(self, metric: Any, prefix: str | None = None):
        if isinstance(metric, (str, os.PathLike)):
            metric = load_metric(metric)
        if not (is_module(metric) or callable(metric)):
            raise TypeError(f"A metric must be a callable (predictions, references) -> dict, an evaluate module, "
                            f"or the path of a metric script; got {type(metric).__name__}: {metric!r:.80}.")
        self.metric, self.prefix = metric, prefix
        self.name = prefix or _name_of(metric)

    def compute(self, predictions: list, references: list) -> dict[str, float]:
        if is_module(self.metric):
            result = self.metric.compute(predictions=predictions, references=references)
        else:
            result = self.metric(predictions, references)
        return self._numbers(result)

    def _numbers(self, result: Any) -> dict[str, float]:
        """The result as ``{key: float}``: a single number is named after the metric; the rest is left out."""
        if _is_number(result):
            return {self.name: float(result)}
        if not isinstance(result, Mapping):
            raise TypeError(f"it returned {type(result).__name__}, not a dict of numbers or a number")
        kept, left_out = {}, []
        for key, value in result.items():
            if _is_number(value):
                kept[f"{self.prefix}_{key}" if self.prefix else str(key)] = float(value)
            else:
                left_out.append(str(key))
        if left_out:
            warnings.warn(f"Metric {self.name!r}: left out {left_out}, which are not numbers; to keep them, wrap the "
                          "metric in a function that reduces them to numbers.", TaskzooWarning, stacklevel=2)
        return kept


class MetricSet:
    """The metrics given as ``metrics=``, resolved once (scripts loaded) and scored together."""

    def __init__(self, metrics: list[CustomMetric]):
        self.metrics = metrics

    @classmethod
    def of(cls, metrics: Any) -> MetricSet | None:
        """``metrics`` as given (None, one metric, a list, a dict ``{prefix: metric}``, or a MetricSet)."""
        if metrics is None or isinstance(metrics, MetricSet):
            return metrics
        if isinstance(metrics, Mapping):
            resolved = [CustomMetric(metric, str(prefix)) for prefix, metric in metrics.items()]
        elif isinstance(metrics, (str, os.PathLike)) or is_module(metrics) or callable(metrics):
            resolved = [CustomMetric(metrics)]
        else:
            resolved = [CustomMetric(metric) for metric in metrics]
        seen: dict[str, int] = {}
        for metric in resolved:  # two lambdas, say: failures and reports need names apart
            seen[metric.name] = seen.get(metric.name, 0) + 1
            if seen[metric.name] > 1:
                metric.name = f"{metric.name}_{seen[metric.name]}"
        return cls(resolved) if resolved else None

    def compute(self, predictions: list, references: list, builtin: dict[str, float]) -> Evaluation:
        """Score every metric; one that raises, or reports a key already taken, is recorded as failed."""
        evaluation = Evaluation(dict(builtin))
        for metric in self.metrics:
            try:
                result = metric.compute(predictions, references)
                taken = [key for key in result if key in evaluation.metrics]
                if taken:
                    owner = evaluation.sources.get(taken[0], "the task")
                    raise ValueError(f"it reports {taken}, which {owner} already reports; name it apart with a "
                                     f"dict, metrics={{'my_{metric.name}': ...}}, to get my_{metric.name}_<key>")
            except Exception as error:  # noqa: BLE001 - reported with the metric's name, never lost silently
                evaluation.failures[metric.name] = f"{type(error).__name__}: {error}"
                continue
            evaluation.metrics.update(result)
            evaluation.sources.update(dict.fromkeys(result, metric.name))
        return evaluation


# Words in a metric's name that mean lower is better (whole words of the name: "wer_normalized", "ter").
LOWER_IS_BETTER = {"loss", "error", "errors", "wer", "cer", "mer", "wil", "ter", "mse", "mae", "rmse", "perplexity",
                   "distance", "fid", "kid"}


def greater_is_better(key: str, metric_name: str | None = None) -> bool:
    """Whether a higher ``key`` is better, from its words, else from those of the metric that reported it."""
    return not any(set(re.split(r"[^a-z0-9]+", name.lower())) & LOWER_IS_BETTER for name in (key, metric_name or ""))


def _is_number(value: Any) -> bool:
    """Python, numpy and torch scalars (0-d arrays too); not lists, strings or None."""
    try:
        array = np.asarray(value)
    except Exception:  # noqa: BLE001 - whatever numpy cannot take is not a number
        return False
    return array.ndim == 0 and array.dtype.kind in "biuf"


def _name_of(metric: Any) -> str:
    if is_module(metric):
        names = getattr(metric, "evaluation_module_names", None)  # CombinedEvaluations
        return "+".join(names) if names else str(getattr(metric, "name", type(metric).__name__))
    inner = getattr(metric, "func", metric)  # functools.partial
    return getattr(inner, "__name__", type(inner).__name__)
