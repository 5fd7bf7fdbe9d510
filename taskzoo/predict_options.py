"""The options predict takes, read from a task's signatures; which stage each one goes to; and the checks of
their names and values that the Python API, the command line (``--set``) and the server (``parameters``) share.

A task's options are the keyword parameters of its ``predict``, ``preprocess_batch`` and ``predict_batch``.
Each stage gets the options its signature names (:func:`route`), as transformers' pipelines split theirs with
``_sanitize_parameters``; a stage with ``**kwargs`` also gets those no stage names (``predict_batch`` passes
them on to ``generate()``: translation, Whisper).
An unknown name is refused with the closest known one (a ``TypeError``, as Python's own for a bad keyword);
a value of the wrong type or range with the option's name (a ``ValueError``), before any input is touched.
Where ``predict_batch`` passes other keywords on to ``generate()``, a name close to a known one is refused as
a typo, and any other name is left for ``generate()`` to judge.
"""

from __future__ import annotations

import difflib
import inspect
import math
from functools import cache

# Set by a task's own predict override, not by its callers (speech recognition batches windows by batch_size).
SET_BY_PREDICT = ("window_batch",)


def _integer(value, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _number(value, low: float = -math.inf, high: float = math.inf) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high


# What the options that tasks share must be. Others get their type from the default in their signature.
RULES = {
    "batch_size": ("a positive integer", lambda v: _integer(v, 1)),
    "num_workers": ("a non-negative integer", lambda v: _integer(v, 0)),
    "top_k": ("a positive integer", lambda v: _integer(v, 1)),
    "num_beams": ("a positive integer", lambda v: _integer(v, 1)),
    "max_new_tokens": ("a positive integer", lambda v: _integer(v, 1)),
    "num_inference_steps": ("a positive integer", lambda v: _integer(v, 1)),
    "sampling_rate": ("a positive integer (samples per second)", lambda v: _integer(v, 1)),
    "threshold": ("a number in [0, 1]", lambda v: _number(v, 0, 1)),
    "chunk_length_s": ("a positive number of seconds", lambda v: _number(v, 1e-9)),
    "stride_length_s": ("a non-negative number of seconds", lambda v: _number(v, 0)),
    "guidance_scale": ("a number", lambda v: _number(v)),
    "seed": ("an integer", lambda v: _integer(v, -(2**63))),
}
BY_DEFAULT = {bool: ("true or false", lambda v: isinstance(v, bool)),
              int: ("an integer", lambda v: _integer(v, -(2**63))),
              float: ("a number", lambda v: _number(v))}


@cache
def _signature_options(task_class) -> tuple[dict[str, inspect.Parameter], bool]:
    """(name -> parameter, whether predict_batch passes other keywords on) for a task class."""
    from taskzoo.task import Task

    options, forwards = {}, False
    for function in (Task.predict, task_class.predict, task_class.preprocess_batch, task_class.predict_batch):
        for parameter in list(inspect.signature(function).parameters.values())[2:]:  # self, inputs
            if parameter.kind is parameter.VAR_KEYWORD:
                forwards = forwards or function is task_class.predict_batch
            elif parameter.kind is not parameter.VAR_POSITIONAL:
                options.setdefault(parameter.name, parameter)
    return options, forwards


@cache
def _stage_names(function) -> tuple[frozenset[str], bool]:
    """(the keyword options ``function``, a preprocess_batch or predict_batch, names; whether it has **kwargs)."""
    parameters = list(inspect.signature(function).parameters.values())[2:]  # self, inputs
    named = frozenset(p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))
    return named, any(p.kind is p.VAR_KEYWORD for p in parameters)


def route(task, options: dict) -> tuple[dict, dict]:
    """``options`` split into ``(preprocess_batch's, predict_batch's)``: each gets those its signature names
    (both, where both name one: speech's ``sampling_rate``), and one with ``**kwargs`` the rest."""
    task_class = task if isinstance(task, type) else type(task)
    stages = [_stage_names(task_class.preprocess_batch), _stage_names(task_class.predict_batch)]
    named = set().union(*(names for names, _ in stages))
    return tuple({key: value for key, value in options.items() if key in names or (rest and key not in named)}
                 for names, rest in stages)


def option_names(task) -> list[str]:
    """The options a caller may give predict for ``task`` (a task or its class), in signature order."""
    task_class = task if isinstance(task, type) else type(task)
    return [name for name in _signature_options(task_class)[0] if name not in SET_BY_PREDICT]


def option_defaults(task) -> dict:
    """Each option with its default (None where it has none, or one that is not a plain value)."""
    task_class = task if isinstance(task, type) else type(task)
    parameters = _signature_options(task_class)[0]
    plain = (str, int, float, bool, type(None))
    return {name: parameters[name].default if isinstance(parameters[name].default, plain) else None
            for name in option_names(task)}


@cache
def generation_names(model_class=None) -> frozenset[str]:
    """What ``generate()`` takes: generation config fields and generate's own parameters (the model class's,
    where given: Whisper's generate adds language, task, ...)."""
    from transformers import GenerationConfig, GenerationMixin

    names = set(GenerationConfig().to_dict())
    for generate in (GenerationMixin.generate, getattr(model_class, "generate", None)):
        if generate is not None:
            names.update(inspect.signature(generate).parameters)
    return frozenset(names - {"self", "kwargs", "inputs"})


def check_options(task, options: dict, unlisted: tuple[str, ...] = ()) -> None:
    """Refuse an unknown option name or an option value of the wrong type, naming the option. ``task``: a
    loaded task, or its class (then names that only generate() might take are left for later). The message
    lists the known options less ``unlisted`` (those a caller sets itself)."""
    task_class = task if isinstance(task, type) else type(task)
    parameters, forwards = _signature_options(task_class)
    known = [name for name in option_names(task_class) if name not in unlisted]
    for name, value in options.items():
        if name not in parameters:
            if forwards and isinstance(task, type):
                continue  # which names generate() takes depends on the model: checked once it is loaded
            generation = generation_names(type(task.model)) if forwards else frozenset()
            close = difflib.get_close_matches(name, [*known, *generation], n=1)
            if forwards and (name in generation or not close):
                continue  # generate() takes it, or judges it: not a typo of a known name
            hint = f" Did you mean {close[0]!r}?" if close else ""
            others = ", and generate()'s (temperature, length_penalty, ...)" if forwards else ""
            raise TypeError(f"predict() got an unknown option {name!r}.{hint} Options: {', '.join(known)}{others}.")
        default = parameters[name].default
        if value is None and default is None:
            continue
        rule = RULES.get(name) or BY_DEFAULT.get(type(default))
        if rule is not None and not rule[1](value):
            raise ValueError(f"{name} must be {rule[0]}; got {value!r}.")
