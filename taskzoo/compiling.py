"""predict(compile=True): the task's compile target swapped for its ``torch.compile``'d version."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager

import torch


@contextmanager
def compiled(task, enabled: bool = True):
    """Within this context the compile target is its ``torch.compile``'d version (made once, then kept).

    Inductor's freezing folds the weights into the compiled code as constants (bf16 weights are cast
    once, CPU matrices are pre-packed), so the compiled version is dropped whenever the weights can
    change: fine-tuning clears it, and a replaced model is compiled afresh.
    """
    if not enabled:
        yield
        return
    target = task.compile_target()
    if target is None:
        raise ValueError(f"{task.name}: compile=True is not supported for this model: its predict generates "
                         "step by step, which torch.compile would recompile for every length.")
    owner, attribute = target
    module = getattr(owner, attribute)
    if task.device.type == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "c++",
                                                                        "clang++")):
        raise RuntimeError("compile=True on CPU needs a C++ compiler (g++ or clang++), and none was found; "
                           "install one or predict without compile.")
    cached = task.__dict__.get("_compiled")
    if cached is None or cached[0] is not module:
        cached = task._compiled = (module, torch.compile(module, options={"freezing": True}))
    setattr(owner, attribute, cached[1])
    try:
        yield
    finally:
        setattr(owner, attribute, module)

