"""The one training loop, on Accelerate. Every task trains here; tasks differ only in the
``collate`` / ``training_step`` / ``eval_step`` / ``compute_metrics`` they provide.

Accelerate supplies device placement, several processes (``accelerate launch``/``torchrun``), mixed
precision and gradient accumulation, so the same call runs on a laptop CPU and on a GPU cluster.
"""

from __future__ import annotations

import difflib
import json
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from taskzoo import checkpoints
from taskzoo.errors import TrainingError
from taskzoo.evaluation import run_evaluation

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
    metric_for_best: str | None = None  # default: the task's primary metric
    strategy: str = "full"  # what trains; each task lists its strategies
    group_by_length: bool = True  # batches of similar length (less padding), where the task knows lengths
    checkpoint_every: int | None = None  # optimizer steps between full training-state checkpoints
    keep_checkpoints: int = 2  # how many of those to keep (oldest deleted)
    resume_from: str | None = None  # "latest" or a checkpoints/step-N folder
    early_stopping_patience: int | None = None  # evaluations without improvement before stopping
    early_stopping_min_delta: float = 0.0  # smallest change that counts as an improvement
    restore_best: bool | None = None  # end with the best weights; default: on with early stopping
    overwrite: bool = False  # allow an output_dir that holds other files
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
        if config.restore_best is None:
            config.restore_best = config.early_stopping_patience is not None
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
        for name in ("checkpoint_every", "early_stopping_patience"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and value > 0):
                raise ValueError(f"{name} must be a positive integer or None; got {value!r}.")
        if self.eval_every != "epoch" and not (isinstance(self.eval_every, int) and self.eval_every > 0):
            raise ValueError(f"eval_every must be 'epoch' or a positive number of steps; got {self.eval_every!r}.")


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
    from accelerate.utils import DataLoaderConfiguration, set_seed
    from transformers import get_scheduler

    output_dir = Path(config.output_dir or tempfile.mkdtemp(prefix=f"taskzoo-{task.name}-"))
    checkpoints.check_output_dir(output_dir, config.overwrite, resuming=config.resume_from is not None)
    accelerator = new_accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=config.log_with,
        project_dir=str(output_dir),
        step_scheduler_with_optimizer=False,  # stepped below, once per optimizer step
        # The shuffle order is a function of (seed, epoch) alone, so a resumed run sees the same batches.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
    )
    set_seed(config.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)

    model = task.model
    model.train()
    # A generator of its own keeps the loader from drawing on the global RNG each epoch, which would
    # shift dropout masks between a straight run and a resumed one.
    lengths = task.train_lengths(train_set) if config.group_by_length else None
    order = {"shuffle": True} if lengths is None else \
        {"sampler": LengthGroupedSampler(lengths, config.batch_size, config.seed)}
    train_loader = DataLoader(train_set, batch_size=config.batch_size, collate_fn=task.collate, **order,
                              num_workers=config.num_workers, generator=torch.Generator().manual_seed(config.seed))
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
    scheduler = accelerator.prepare(
        get_scheduler(scheduler_name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps))

    # Where the run stands; saved with every checkpoint and restored on resume.
    state = {"step": 0, "epoch": 0, "batches_in_epoch": 0, "best_metric": None, "best_step": None,
             "bad_evaluations": 0, "history": []}
    if config.resume_from is not None:
        state = checkpoints.load_training_state(accelerator, checkpoints.find_checkpoint(output_dir, config.resume_from))
    elif accelerator.is_main_process:  # a fresh run: forget an earlier run's log and checkpoints
        (output_dir / "log.jsonl").unlink(missing_ok=True)
        shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)
    if config.log_with:
        accelerator.init_trackers("taskzoo", config={k: v for k, v in asdict(config).items()
                                                     if isinstance(v, (int, float, str, bool))})
    log = _Log(output_dir / "log.jsonl", accelerator, state["history"])
    result = TrainingResult(output_dir=output_dir, metric=config.metric_for_best, task=task)
    trainable = [p for p in model.parameters() if p.requires_grad]
    log.info(f"Fine-tuning {task.name}: {len(train_set)} samples, {total_steps} optimizer steps, "
             f"{sum(p.numel() for p in trainable):,} of {sum(p.numel() for p in model.parameters()):,} "
             f"parameters trainable ({config.strategy}), output in {output_dir}"
             + (f", resumed at step {state['step']}" if state["step"] else ""))
    best_weights = None  # an in-memory copy for restore_best

    evaluated_at = None

    def evaluate(step: int) -> bool:
        """Evaluate, keep the best model; returns True when early stopping says stop."""
        nonlocal best_weights, evaluated_at
        evaluated_at = step
        metrics = run_evaluation(task, model, eval_loader, accelerator)
        result.final_metrics = metrics
        log.write({"step": step, "epoch": round(step / steps_per_epoch, 3),
                   **{f"eval_{k}": v for k, v in metrics.items()}})
        if accelerator.is_main_process:
            task.on_evaluate(accelerator.unwrap_model(model), output_dir, step)
        if config.metric_for_best not in metrics:
            raise TrainingError(f"metric_for_best={config.metric_for_best!r} is not among the "
                                f"metrics {list(metrics)}.")
        value, best = metrics[config.metric_for_best], state["best_metric"]
        sign = 1 if task.greater_is_better else -1
        if best is None or sign * (value - best) > config.early_stopping_min_delta:
            state.update(best_metric=value, best_step=step, bad_evaluations=0)
            if config.save_checkpoints:
                checkpoints.save_model(task, accelerator, output_dir / "best")
            if config.restore_best:
                best_weights = {k: v.detach().to("cpu", copy=True)
                                for k, v in accelerator.unwrap_model(model).state_dict().items()}
        else:
            state["bad_evaluations"] += 1
        patience = config.early_stopping_patience
        return patience is not None and state["bad_evaluations"] >= patience

    progress = tqdm(total=total_steps, initial=state["step"], desc=f"{task.name}: fine-tune", unit="step",
                    disable=not (config.progress and accelerator.is_local_main_process))
    losses, started, stop = [], time.perf_counter(), False
    start_step = state["step"]
    while state["step"] < total_steps and not stop:
        train_loader.set_epoch(state["epoch"])
        # On resume, skip the batches of this epoch that were already trained on.
        loader = accelerator.skip_first_batches(train_loader, state["batches_in_epoch"]) \
            if state["batches_in_epoch"] else train_loader
        for batch in loader:
            state["batches_in_epoch"] += 1
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    loss = task.training_step(model, batch)["loss"]
                if not torch.isfinite(loss.detach()).all():
                    raise TrainingError(
                        f"The loss became {loss.item()} at step {state['step'] + 1} (epoch {state['epoch'] + 1}). "
                        "Try a lower learning_rate, or mixed_precision='no'. "
                        f"The checkpoints in {output_dir} are untouched.")
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
            state["step"] += 1
            step = state["step"]
            progress.update(1)
            if step % config.log_every == 0 or step == total_steps:
                mean_loss = accelerator.reduce(torch.stack(losses).mean(), reduction="mean").item()
                losses = []
                progress.set_postfix(loss=f"{mean_loss:.4f}")
                log.write({"step": step, "epoch": round(step / steps_per_epoch, 3), "loss": mean_loss,
                           "learning_rate": scheduler.get_last_lr()[0]})
            if eval_loader is not None and config.eval_every != "epoch" and step % config.eval_every == 0:
                stop = evaluate(step)
            if config.checkpoint_every and step % config.checkpoint_every == 0:
                checkpoints.save_training_state(accelerator, output_dir, step, state, config.keep_checkpoints)
            if step >= total_steps or stop:
                break
        else:  # the epoch ran to its end
            state["epoch"] += 1
            state["batches_in_epoch"] = 0
            if eval_loader is not None and config.eval_every == "epoch":
                stop = evaluate(state["step"])
    if eval_loader is not None and not stop and evaluated_at != state["step"]:
        evaluate(state["step"])  # the run ended between evaluations: score the final model too
    progress.close()
    if stop:
        log.info(f"Early stopping at step {state['step']}: no improvement of {config.metric_for_best} in "
                 f"{config.early_stopping_patience} evaluations (best {state['best_metric']:.4f} at step "
                 f"{state['best_step']}).")

    result.seconds = time.perf_counter() - started
    result.steps = state["step"]
    samples = (state["step"] - start_step) * config.batch_size * config.gradient_accumulation_steps \
        * accelerator.num_processes
    result.samples_per_second = samples / max(result.seconds, 1e-9)
    result.best_metric, result.best_step = state["best_metric"], state["best_step"]
    task.model = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    if best_weights is not None:
        task.model.load_state_dict(best_weights)
    task.model.eval()
    if config.save_checkpoints:
        checkpoints.save_model(task, accelerator, output_dir / "last")
    result.history = log.records
    if config.plot and accelerator.is_main_process:
        plot_history(log.records, config.metric_for_best, output_dir / "training_curves.png")
    # Not accelerator.end_training(): it also destroys the process group, and a user may evaluate or
    # fine-tune again in the same launched processes.
    for tracker in accelerator.trackers:
        tracker.finish()
    return result


class LengthGroupedSampler(torch.utils.data.Sampler):
    """A random order whose batches hold rows of similar length, so they pad little: shuffle, cut into
    chunks of 16 batches, sort each chunk by length, cut it into batches, then shuffle the batches (a
    short last batch stays last, keeping the loader's batch boundaries). The order depends only on
    (seed, epoch), so a resumed run and every process see the same one (Accelerate calls set_epoch)."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed, self.epoch = lengths, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order, size = torch.randperm(len(self.lengths), generator=generator).tolist(), self.batch_size
        batches = []
        for start in range(0, len(order), 16 * size):
            chunk = sorted(order[start:start + 16 * size], key=lambda i: -self.lengths[i])
            batches += [chunk[i:i + size] for i in range(0, len(chunk), size)]
        short = [batches.pop()] if batches and len(batches[-1]) < size else []
        for index in [*torch.randperm(len(batches), generator=generator).tolist()]:
            yield from batches[index]
        for batch in short:
            yield from batch


def _parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and normalisation weights, as is standard for transformers."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim < 2 or "norm" in name.lower() else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class _Log:
    """Log records to log.jsonl (main process only), to accelerate's trackers, and to a list."""

    def __init__(self, path: Path, accelerator, records: list[dict]):
        self.path, self.accelerator, self.records = path, accelerator, records
        if accelerator.is_main_process and records:  # resumed: the log ends where the checkpoint was taken
            path.write_text("".join(json.dumps(record) + "\n" for record in records))

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


def plot_history(records: list[dict], metric: str, path: Path) -> Path | None:
    """A PNG of the training loss and the evaluation metric per step (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    losses = [(r["step"], r["loss"]) for r in records if "loss" in r]
    scores = [(r["step"], r[f"eval_{metric}"]) for r in records if f"eval_{metric}" in r]
    figure, axes = plt.subplots(1, 2 if scores else 1, figsize=(10 if scores else 5, 3.5), squeeze=False)
    for axis, points, label in zip(axes[0], [losses, scores], ["training loss", f"eval {metric}"]):
        if points:
            axis.plot(*zip(*points), marker="." if len(points) < 50 else None)
        axis.set_xlabel("optimizer step")
        axis.set_title(label)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
