"""What fine-tuning writes to ``output_dir``, written so that a crash never breaks it.

- ``best/`` and ``last/``: model folders that ``taskzoo.load`` and the plain loaders open;
- ``checkpoints/step-N/``: full training state (model, optimizer, scheduler, RNG states, position in the
  data: each process's stream position for a stream) for an exact resume, the newest ``keep_checkpoints``
  kept; written by default at each evaluation and epoch end;
- ``taskzoo_run.json``: whether the run is still running (or was interrupted) or finished, so that a new run
  into the same folder is refused rather than replacing it (:func:`check_output_dir`);
- ``log.jsonl``: one record per log line or evaluation (:class:`RunLog`, which also feeds Accelerate's trackers);
- ``training_curves.png``: the loss and the evaluation metric per step (:func:`plot_history`).

Every folder is written under a temporary name and then renamed into place, so a kill during a save
leaves the previous version intact.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from tqdm.auto import tqdm

from taskzoo.errors import ExistingRunError, TrainingError

STATE_FILE = "taskzoo_state.json"  # in each checkpoint: where the run stood
RUN_FILE = "taskzoo_run.json"  # in output_dir: {"status": "running" | "finished", "step", "total_steps"}
# Names that mark a folder as taskzoo's own output (anything else there is the user's).
OUTPUT_NAMES = {"best", "last", "checkpoints", "log.jsonl", "training_curves.png", "logs", "taskzoo", RUN_FILE}
# What a new run deletes first; best/ and last/ stay until it writes its own (a run that fails keeps them).
CLEARED = ("checkpoints", "log.jsonl", "training_curves.png", RUN_FILE)


def check_output_dir(output_dir: Path, overwrite: bool, resume_from) -> None:
    """Before any work: refuse an output_dir whose earlier run a new run would replace (its checkpoints or
    models), unless this run resumes it or ``overwrite``; and one that holds files that are not taskzoo's,
    unless ``overwrite`` or resuming. With ``resume_from``, find the checkpoint now: a wrong one fails early."""
    if resume_from is not None:
        find_checkpoint(output_dir, resume_from)
        return
    if not output_dir.is_dir() or overwrite:
        return
    earlier = earlier_run(output_dir)
    if earlier is not None:
        raise ExistingRunError(output_dir, *earlier)
    foreign = sorted(p.name for p in output_dir.iterdir()
                     if p.name not in OUTPUT_NAMES and not p.name.startswith(".") and p.suffix != ".png")
    if foreign:
        raise TrainingError(
            f"output_dir {output_dir} already holds files that taskzoo did not write ({', '.join(foreign[:5])}). "
            "Choose an empty folder, or pass overwrite=True to write there anyway.")


def earlier_run(output_dir: Path) -> tuple[str, bool] | None:
    """(what output_dir holds, whether it can be resumed) when a new run would replace an earlier run's
    checkpoints or models; None when it holds nothing of the kind (a log alone is not kept)."""
    found = checkpoint_folders(output_dir)
    kept = [output_dir / name for name in ("best", "last") if (output_dir / name).is_dir()]
    if not found and not kept:
        return None
    run = read_run(output_dir)
    # A folder from a taskzoo without the run file: finished when last/ was written.
    finished = run.get("status") == "finished" if run else (output_dir / "last").is_dir()
    of = f" of {run['total_steps']}" if run.get("total_steps") else ""
    if finished:
        steps = f" of {run['step']} steps" if run.get("step") else ""
        kept += [output_dir / "checkpoints"] if found else []
        return f"holds a finished run{steps} ({', '.join(map(str, kept))})", False
    if found:
        return (f"holds an unfinished run: its last checkpoint is {found[-1]} "
                f"(step {checkpoint_step(found[-1])}{of})"), True
    return f"holds an unfinished run with no checkpoint to resume from, and its model in {kept[0]}", False


def read_run(output_dir: Path) -> dict:
    """What the run file of output_dir says ({} when there is none, or it cannot be read)."""
    try:
        return json.loads((output_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}


def start_run(output_dir: Path, total_steps: int, resuming: bool) -> None:
    """Main process: clear an earlier run's checkpoints and log (unless resuming it), then mark the run as
    running: until finish_run marks it finished, a new run into output_dir is refused (see check_output_dir)."""
    if not resuming:
        for path in (output_dir / name for name in CLEARED):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    _write_run(output_dir, {"status": "running", "total_steps": total_steps})


def finish_run(output_dir: Path, step: int, total_steps: int, written: list[str]) -> None:
    """Main process: mark the run finished, once the model folders it ``written`` are; a best/ or last/ it did
    not write is an earlier run's, and goes."""
    for name in {"best", "last"} - set(written):
        shutil.rmtree(output_dir / name, ignore_errors=True)
    _write_run(output_dir, {"status": "finished", "step": step, "total_steps": total_steps})


def _write_run(output_dir: Path, record: dict) -> None:
    staging = output_dir / f".{RUN_FILE}-saving"
    staging.write_text(json.dumps(record) + "\n")
    os.replace(staging, output_dir / RUN_FILE)


def swap_in(staging: Path, target: Path) -> None:
    """Replace ``target`` by ``staging`` with renames only: ``target`` is never half-written."""
    retired = target.with_name(f".{target.name}-old")
    if target.exists():
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(target, retired)
    os.replace(staging, target)
    shutil.rmtree(retired, ignore_errors=True)


def save_model(task, accelerator, target: Path, model=None) -> None:
    """Save the task's model as a loadable folder at ``target`` (main process writes). ``model`` is the
    prepared model: under FSDP or DeepSpeed each process holds a shard of each weight, and every process
    takes part in gathering them (``accelerator.get_state_dict``) before the main process writes."""
    from accelerate.utils import DistributedType

    accelerator.wait_for_everyone()
    sharded = model is not None and accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    weights = accelerator.get_state_dict(model) if sharded else None
    if accelerator.is_main_process:
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            if weights is None:
                task.save(staging)
            else:  # Accelerate's recipe for sharded engines; the processor goes beside the weights
                accelerator.unwrap_model(model).save_pretrained(staging, state_dict=weights)
                if task.processor is not None:
                    task.processor.save_pretrained(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        swap_in(staging, target)
    accelerator.wait_for_everyone()


def link_model(accelerator, source: Path, target: Path) -> None:
    """Make ``target`` a copy of the model folder ``source`` (main process) of hard links, so that no weight
    is written twice (last/ when the final model is the best one); a plain copy where the file system has
    no hard links. Swapped in like a save."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            shutil.copytree(source, staging, copy_function=_link_or_copy, dirs_exist_ok=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        swap_in(staging, target)
    accelerator.wait_for_everyone()


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def save_training_state(accelerator, output_dir: Path, step: int, state: dict, keep: int, stream=None) -> Path:
    """Write ``checkpoints/step-N`` (every process writes its RNG state, and its position in ``stream``),
    then drop the oldest; returns the checkpoint's folder."""
    folder = output_dir / "checkpoints"
    staging = folder / f".step-{step}-saving"
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    if stream is not None:
        (staging / f"stream_{accelerator.process_index}.json").write_text(json.dumps(stream.state_dict()))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (staging / STATE_FILE).write_text(json.dumps(state))
        swap_in(staging, folder / f"step-{step}")
        for old in checkpoint_folders(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return folder / f"step-{step}"


def checkpoint_folders(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a folder still being written has a dotted name)."""
    folder = output_dir / "checkpoints"
    if not folder.is_dir():
        return []
    done = [p for p in folder.glob("step-*") if (p / STATE_FILE).exists()]
    return sorted(done, key=checkpoint_step)


def checkpoint_step(checkpoint: Path) -> int:
    """The optimizer step of a ``checkpoints/step-N`` folder."""
    return int(checkpoint.name.split("-")[1])


def find_checkpoint(output_dir: Path, resume_from: str | os.PathLike) -> Path:
    """``"latest"`` -> the newest complete checkpoint in output_dir; a path -> that checkpoint."""
    if str(resume_from) == "latest":
        found = checkpoint_folders(output_dir)
        if not output_dir.is_dir():
            raise TrainingError(f"resume_from='latest' but output_dir {output_dir} does not exist: no run to resume.")
        if not found:
            raise TrainingError(f"resume_from='latest' but {output_dir / 'checkpoints'} holds no complete "
                                "checkpoint: they are written at each evaluation and epoch end (or every N steps "
                                "with checkpoint_every=N), and the run stopped before the first.")
        return found[-1]
    path = Path(resume_from)
    if not (path / STATE_FILE).exists():
        raise TrainingError(f"{path} is not a taskzoo training checkpoint (no {STATE_FILE}).")
    return path


def load_training_state(accelerator, checkpoint: Path, stream=None) -> dict:
    """Restore a checkpoint into the prepared objects (and ``stream``'s position); returns the run's state."""
    accelerator.load_state(str(checkpoint))
    if stream is not None:
        position = checkpoint / f"stream_{accelerator.process_index}.json"
        if not position.exists():
            raise TrainingError(f"{checkpoint} holds no stream position for process {accelerator.process_index}: "
                                "it was written by an in-memory run or by fewer processes. Resume a stream with "
                                "the same data and number of processes.")
        stream.load_state_dict(json.loads(position.read_text()))
    return json.loads((checkpoint / STATE_FILE).read_text())


class RunLog:
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
        # On standard error, beside the progress bar: standard output is the caller's (the CLI prints its JSON
        # result there, so `taskzoo finetune ... > result.json` holds nothing else).
        if self.accelerator.is_local_main_process:
            tqdm.write(message, file=sys.stderr)


def history_charts(records: list[dict], metric: str) -> list[tuple[str, list[tuple[int, float]]]]:
    """(title, [(step, value), ...]) of each chart plot_history draws: the training loss, and the evaluation
    metric where the run evaluated."""
    losses = [(r["step"], r["loss"]) for r in records if "loss" in r]
    scores = [(r["step"], r[f"eval_{metric}"]) for r in records if f"eval_{metric}" in r]
    # A metric that is itself a loss on the eval data (text-to-image's eval_loss) is logged as eval_eval_loss.
    charts = [("training loss", losses), (metric if metric.startswith("eval_") else f"eval {metric}", scores)]
    return [(title, points) for title, points in charts if points or title == "training loss"]


def plot_history(records: list[dict], metric: str, path: Path) -> Path | None:
    """A PNG of the training loss and the evaluation metric per step (needs matplotlib). A chart of a single
    point (a run that evaluated once) shows it as a dot labelled with its value."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return None
    charts = history_charts(records, metric)
    # matplotlib's object API, not pyplot: no global figure state (and pyplot's import) at the end of every run.
    figure = Figure(figsize=(5 * len(charts), 3.5))
    for axis, (title, points) in zip(figure.subplots(1, len(charts), squeeze=False)[0], charts):
        if len(points) == 1:
            (step, value), = points
            axis.plot([step], [value], marker="o")
            axis.annotate(f"{value:.4g}", (step, value), textcoords="offset points", xytext=(8, 6))
            axis.set_xticks([step])
            title += f" (once, at step {step})"
        elif points:
            axis.plot(*zip(*points), marker="." if len(points) < 50 else None)
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        axis.set_xlabel("optimizer step")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    # Fixed margins that fit a title, tick labels and the axis label at this size: tight_layout measures every
    # text to find the same, and took a third of the chart's time.
    figure.subplots_adjust(left=0.8 / figure.get_figwidth(), right=1 - 0.2 / figure.get_figwidth(),
                           bottom=0.15, top=0.9, wspace=0.9 / 5)
    figure.savefig(path, dpi=100)
    return path
