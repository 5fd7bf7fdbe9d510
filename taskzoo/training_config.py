"""What finetune() accepts (TrainingConfig, checked before any work) and what it returns (TrainingResult)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from taskzoo import checkpoints
from taskzoo.custom_metrics import MetricSet

SCHEDULERS = ("linear", "cosine", "constant")
PRECISIONS = ("no", "bf16", "fp16")


@dataclass
class TrainingConfig:
    """Everything finetune() accepts besides the task's own options; unknown names are refused."""

    output_dir: str | None = None  # None: a fresh temporary folder
    epochs: float = 3
    max_steps: int | None = None  # optimizer steps; overrides epochs when given
    batch_size: int = 8  # per process
    eval_batch_size: int | None = None  # default: batch_size
    learning_rate: float | None = None  # default: the task's default_learning_rate
    weight_decay: float = 0.0
    warmup_steps: int = 0
    warmup_ratio: float = 0.0  # used when warmup_steps is 0
    scheduler: str = "linear"  # linear, cosine or constant (after warm-up)
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"  # no, bf16 (CPU or GPU) or fp16 (GPU)
    max_grad_norm: float | None = 1.0  # None or 0 disables clipping
    seed: int = 42
    eval_every: int | str = "epoch"  # "epoch", or every N optimizer steps
    log_every: int = 10  # optimizer steps between loss log lines
    save_checkpoints: bool = True  # best/ and last/ model folders in output_dir
    log_with: str | list[str] | None = None  # accelerate trackers: "tensorboard", "wandb", ...
    num_workers: int = 0  # DataLoader workers
    progress: bool = True  # tqdm bar on the main process
    metric_for_best: str | None = None  # default: the task's primary metric; may name one of your metrics' keys
    greater_is_better: bool | None = None  # for metric_for_best; None: the task's rule, or inferred from the name
    metrics: Any = None  # your own metrics, scored at each evaluation (see taskzoo.custom_metrics)
    strategy: str = "full"  # what trains; each task lists its strategies
    group_by_length: bool = True  # batches of similar length (less padding), where the task knows lengths
    # Full training-state checkpoints (for resume_from): "eval" at each evaluation and epoch end, N every N
    # optimizer steps, None never. save_checkpoints=False turns the "eval" default off too.
    checkpoint_every: int | str | None = "eval"
    keep_checkpoints: int = 2  # how many of those to keep (oldest deleted)
    resume_from: str | None = None  # "latest" (output_dir's newest checkpoint) or a checkpoints/step-N folder
    early_stopping_patience: int | None = None  # evaluations without improvement before stopping
    early_stopping_min_delta: float = 0.0  # smallest change that counts as an improvement
    restore_best: bool | None = None  # end with the best weights; default: on with early stopping
    # Start over in an output_dir that holds an earlier run (deleting its checkpoints; its best/ and last/ are
    # replaced) or other files; without it, such a folder is refused (resume_from="latest" continues a run there).
    overwrite: bool = False
    plot: bool = True  # training_curves.png in output_dir

    @classmethod
    def from_kwargs(cls, task, **kwargs) -> TrainingConfig:
        names = [f.name for f in fields(cls)]
        for key in kwargs:
            if key not in names:
                known = names + list(task.finetune_options)
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise TypeError(f"finetune() got an unknown option {key!r}.{hint}")
        config = cls(**kwargs)
        config.learning_rate = config.learning_rate or task.default_learning_rate
        config.metric_for_best = config.metric_for_best or task.primary_metric
        config.metrics = MetricSet.of(config.metrics)
        if config.restore_best is None:
            config.restore_best = config.early_stopping_patience is not None
        config.check()
        if config.output_dir is not None:  # before any data is read (every process checks, before any writes)
            checkpoints.check_output_dir(Path(config.output_dir), config.overwrite, config.resume_from)
        return config

    def check(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}; got {self.scheduler!r}.")
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"mixed_precision must be one of {PRECISIONS}; got {self.mixed_precision!r}.")
        if self.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise ValueError("mixed_precision='fp16' needs a CUDA GPU; on CPU use 'bf16'.")
        for name in ("batch_size", "gradient_accumulation_steps", "log_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer; got {getattr(self, name)!r}.")
        if self.max_steps is None and not self.epochs > 0:
            raise ValueError(f"epochs must be positive; got {self.epochs!r}.")
        for name, others in (("checkpoint_every", ("eval", None)), ("early_stopping_patience", (None,)),
                             ("keep_checkpoints", ())):
            value = getattr(self, name)
            if value not in others and not (isinstance(value, int) and value > 0):
                raise ValueError(f"{name} must be a positive integer{''.join(f' or {o!r}' for o in others)}; "
                                 f"got {value!r}.")
        if self.eval_every != "epoch" and not (isinstance(self.eval_every, int) and self.eval_every > 0):
            raise ValueError(f"eval_every must be 'epoch' or a positive number of steps; got {self.eval_every!r}.")
        if self.resume_from is not None and self.overwrite:
            raise ValueError("resume_from continues the run in output_dir and overwrite=True starts over: pass one.")
        if self.greater_is_better not in (None, True, False):
            raise ValueError(f"greater_is_better must be True, False or None; got {self.greater_is_better!r}.")


@dataclass
class TrainingResult:
    """What finetune() returns: the history of log records, the best metric and where it was reached."""

    output_dir: Path
    history: list[dict] = field(default_factory=list)  # every log record, as written to log.jsonl
    metric: str = ""  # the metric used to pick the best checkpoint
    best_metric: float | None = None
    best_step: int | None = None
    final_metrics: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    seconds: float = 0.0
    samples_per_second: float = 0.0
    task: Any = field(default=None, repr=False)  # the fine-tuned task, ready to predict and save
