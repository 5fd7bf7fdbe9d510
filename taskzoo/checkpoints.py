"""What fine-tuning writes to ``output_dir``, written so that a crash never breaks it.

- ``best/`` and ``last/``: model folders that ``taskzoo.load`` and the plain loaders open;
- ``checkpoints/step-N/``: full training state (model, optimizer, scheduler, RNG states, position in the
  data) for an exact resume, the newest ``keep_checkpoints`` kept;
- ``log.jsonl``: one record per log line or evaluation (:class:`RunLog`, which also feeds Accelerate's trackers);
- ``training_curves.png``: the loss and the evaluation metric per step (:func:`plot_history`).

Every folder is written under a temporary name and then renamed into place, so a kill during a save
leaves the previous version intact.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from tqdm.auto import tqdm

from taskzoo.errors import TrainingError

# Names that mark a folder as taskzoo's own output (anything else there is the user's).
OUTPUT_NAMES = {"best", "last", "checkpoints", "log.jsonl", "training_curves.png", "logs", "taskzoo"}
STATE_FILE = "taskzoo_state.json"


def check_output_dir(output_dir: Path, overwrite: bool, resuming: bool) -> None:
    """Refuse a folder holding things that are not taskzoo's, unless ``overwrite``."""
    if not output_dir.exists() or overwrite or resuming:
        return
    foreign = sorted(p.name for p in output_dir.iterdir()
                     if p.name not in OUTPUT_NAMES and not p.name.startswith(".") and p.suffix != ".png")
    if foreign:
        raise TrainingError(
            f"output_dir {output_dir} already holds files that taskzoo did not write ({', '.join(foreign[:5])}). "
            "Choose an empty folder, or pass overwrite=True to write there anyway.")


def swap_in(staging: Path, target: Path) -> None:
    """Replace ``target`` by ``staging`` with renames only: ``target`` is never half-written."""
    retired = target.with_name(f".{target.name}-old")
    if target.exists():
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(target, retired)
    os.replace(staging, target)
    shutil.rmtree(retired, ignore_errors=True)


def save_model(task, accelerator, target: Path) -> None:
    """Save the task's model as a loadable folder at ``target`` (main process writes)."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            task.save(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        swap_in(staging, target)
    accelerator.wait_for_everyone()


def save_training_state(accelerator, output_dir: Path, step: int, state: dict, keep: int) -> None:
    """Write ``checkpoints/step-N`` (every process writes its RNG state), then drop the oldest."""
    folder = output_dir / "checkpoints"
    staging = folder / f".step-{step}-saving"
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (staging / STATE_FILE).write_text(json.dumps(state))
        swap_in(staging, folder / f"step-{step}")
        for old in checkpoint_folders(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def checkpoint_folders(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a folder still being written has a dotted name)."""
    folder = output_dir / "checkpoints"
    if not folder.is_dir():
        return []
    done = [p for p in folder.glob("step-*") if (p / STATE_FILE).exists()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def find_checkpoint(output_dir: Path, resume_from: str | os.PathLike) -> Path:
    """``"latest"`` -> the newest complete checkpoint in output_dir; a path -> that checkpoint."""
    if str(resume_from) == "latest":
        found = checkpoint_folders(output_dir)
        if not found:
            raise TrainingError(f"resume_from='latest' but {output_dir / 'checkpoints'} holds no complete "
                                "checkpoint. Set checkpoint_every=N to write them.")
        return found[-1]
    path = Path(resume_from)
    if not (path / STATE_FILE).exists():
        raise TrainingError(f"{path} is not a taskzoo training checkpoint (no {STATE_FILE}).")
    return path


def load_training_state(accelerator, checkpoint: Path) -> dict:
    accelerator.load_state(str(checkpoint))
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
