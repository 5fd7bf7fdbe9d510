"""Accelerator set-up shared by the training loop and standalone evaluation."""

from __future__ import annotations


def new_accelerator(**kwargs):
    """An Accelerator with these settings, even if an earlier call in this process used others.

    Accelerate keeps its settings in a process-wide singleton that refuses to change; a library is
    called many times per process, so the mixed-precision part is reset (the process group is kept).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    return Accelerator(**kwargs)
