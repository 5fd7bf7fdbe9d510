"""The one training loop, on Accelerate. Every task trains here; tasks differ only in the
``collate`` / ``training_step`` / ``eval_step`` / ``compute_metrics`` they provide.

Accelerate supplies device placement, several processes (``accelerate launch``/``torchrun``), mixed
precision and gradient accumulation, so the same call runs on a laptop CPU and on a GPU cluster.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from taskzoo.errors import TrainingError
from taskzoo.evaluation import run_evaluation

SCHEDULERS = ("linear", "cosine", "constant")
PRECISIONS = ("no", "bf16", "fp16")


@dataclass
class TrainingConfig:
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
    metric_for_best: str | None = None  # default: the task's primary metric
    strategy: str = "full"  # what trains; each task lists its strategies

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
        config.check()
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
        if self.eval_every != "epoch" and not (isinstance(self.eval_every, int) and self.eval_every > 0):
            raise ValueError(f"eval_every must be 'epoch' or a positive number of steps; got {self.eval_every!r}.")


@dataclass
class TrainingResult:
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


def train_task(task, train_set, eval_set, config: TrainingConfig) -> TrainingResult:
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    output_dir = Path(config.output_dir or tempfile.mkdtemp(prefix=f"taskzoo-{task.name}-"))
    accelerator = new_accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=config.log_with,
        project_dir=str(output_dir),
        step_scheduler_with_optimizer=False,  # stepped below, once per optimizer step
    )
    set_seed(config.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)

    model = task.model
    model.train()
    train_loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, collate_fn=task.collate,
                              num_workers=config.num_workers,
                              generator=torch.Generator().manual_seed(config.seed))
    eval_loader = None
    if eval_set is not None:
        eval_loader = DataLoader(eval_set, batch_size=config.eval_batch_size or config.batch_size,
                                 shuffle=False, collate_fn=task.collate, num_workers=config.num_workers)
    optimizer = torch.optim.AdamW(_parameter_groups(model, config.weight_decay), lr=config.learning_rate)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    if eval_loader is not None:
        eval_loader = accelerator.prepare(eval_loader)

    steps_per_epoch = max(1, math.ceil(len(train_loader) / config.gradient_accumulation_steps))
    total_steps = config.max_steps or math.ceil(config.epochs * steps_per_epoch)
    warmup = config.warmup_steps or int(config.warmup_ratio * total_steps)
    scheduler_name = "constant_with_warmup" if config.scheduler == "constant" else config.scheduler
    scheduler = get_scheduler(scheduler_name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)

    if config.log_with:
        accelerator.init_trackers("taskzoo", config={k: v for k, v in asdict(config).items()
                                                     if isinstance(v, (int, float, str, bool))})
    log = _Log(output_dir / "log.jsonl", accelerator)
    result = TrainingResult(output_dir=output_dir, metric=config.metric_for_best, task=task)
    trainable = [p for p in model.parameters() if p.requires_grad]
    log.info(f"Fine-tuning {task.name}: {len(train_set)} samples, {total_steps} optimizer steps, "
             f"{sum(p.numel() for p in trainable):,} trainable parameters, output in {output_dir}")

    def evaluate_and_checkpoint(step: int, epoch: float) -> None:
        if eval_loader is not None:
            metrics = run_evaluation(task, model, eval_loader, accelerator)
            result.final_metrics = metrics
            if accelerator.is_main_process:
                task.on_evaluate(accelerator.unwrap_model(model), output_dir, step)
            log.write({"step": step, "epoch": round(epoch, 3), **{f"eval_{k}": v for k, v in metrics.items()}})
            value = metrics.get(config.metric_for_best)
            if value is None:
                raise TrainingError(f"metric_for_best={config.metric_for_best!r} is not among the "
                                    f"metrics {list(metrics)}.")
            if result.best_metric is None or _better(value, result.best_metric, task.greater_is_better):
                result.best_metric, result.best_step = value, step
                if config.save_checkpoints:
                    _save_checkpoint(task, accelerator, output_dir / "best")

    progress = tqdm(total=total_steps, desc=f"{task.name}: fine-tune", unit="step",
                    disable=not (config.progress and accelerator.is_local_main_process))
    step, losses, started = 0, [], time.perf_counter()
    epochs = math.ceil(total_steps / steps_per_epoch)
    for epoch in range(epochs):
        if step >= total_steps:
            break
        for batch in train_loader:
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    loss = task.training_step(model, batch)["loss"]
                if not torch.isfinite(loss.detach()).all():
                    raise TrainingError(
                        f"The loss became {loss.item()} at step {step + 1} (epoch {epoch + 1}). "
                        "Try a lower learning_rate, or mixed_precision='no'. "
                        f"The last good checkpoint in {output_dir} is untouched.")
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm:
                    accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach().float())
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            task.on_optimizer_step(model)
            step += 1
            progress.update(1)
            if step % config.log_every == 0 or step == total_steps:
                mean_loss = accelerator.reduce(torch.stack(losses).mean(), reduction="mean").item()
                losses = []
                progress.set_postfix(loss=f"{mean_loss:.4f}")
                log.write({"step": step, "epoch": round(step / steps_per_epoch, 3), "loss": mean_loss,
                           "learning_rate": scheduler.get_last_lr()[0]})
            if config.eval_every != "epoch" and step % config.eval_every == 0:
                evaluate_and_checkpoint(step, step / steps_per_epoch)
            if step >= total_steps:
                break
        if config.eval_every == "epoch":
            evaluate_and_checkpoint(step, step / steps_per_epoch)
    progress.close()

    result.seconds = time.perf_counter() - started
    result.steps = step
    samples = step * config.batch_size * config.gradient_accumulation_steps * accelerator.num_processes
    result.samples_per_second = samples / max(result.seconds, 1e-9)
    task.model = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    task.model.eval()
    if config.save_checkpoints:
        _save_checkpoint(task, accelerator, output_dir / "last")
    result.history = log.records
    accelerator.end_training()
    return result


def _parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and normalisation weights, as is standard for transformers."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim < 2 or "norm" in name.lower() else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _better(value: float, best: float, greater_is_better: bool) -> bool:
    return value > best if greater_is_better else value < best


def _save_checkpoint(task, accelerator, target: Path) -> None:
    """Save into a temporary sibling, then swap it in, so a crash mid-save never breaks ``target``."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            task.save(staging)  # task.model is the bare module that prepare() wrapped
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        retired = target.with_name(f".{target.name}-old")
        if target.exists():
            shutil.rmtree(retired, ignore_errors=True)
            os.replace(target, retired)
        os.replace(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    accelerator.wait_for_everyone()


class _Log:
    """Log records to log.jsonl (main process only), to accelerate's trackers, and to a list."""

    def __init__(self, path: Path, accelerator):
        self.path, self.accelerator, self.records = path, accelerator, []

    def write(self, record: dict) -> None:
        self.records.append(record)
        if self.accelerator.is_main_process:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
        if self.accelerator.trackers:
            self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def info(self, message: str) -> None:
        if self.accelerator.is_local_main_process:
            tqdm.write(message)
