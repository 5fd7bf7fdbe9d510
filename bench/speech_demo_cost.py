"""Benchmark: the CPU time of `taskzoo demo`'s speech recognition stop, phase by phase, and its WER over
training seeds. It runs the stop as the demo's second process does (torch on one thread) and counts CPU
seconds (time.process_time, plus child processes), not wall time, so a busy machine still gives usable
figures; say which CPU they came from.

    python bench/speech_demo_cost.py [--seeds 0 1 2 3 4] [--text-to-image]

Phases: toy data (words loaded, clips mixed and written), the tiny model, the evaluation before fine-tuning,
fine-tuning split into collate (audio decoding, features, labels), training steps and evaluations, and the
final predict. --text-to-image also times the demo's text-to-image stop (the other stop of that process).
To compare two versions, run it on both at the same time (PYTHONPATH=the other checkout): CPU seconds still
grow on a busy machine (shared caches and cores), so only figures taken side by side compare.
"""

import argparse
import os
import resource
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

import taskzoo
from common import cpu_line
from taskzoo import testing
from taskzoo.demo import demo_task, quiet_libraries
from taskzoo.tasks.speech_recognition import SpeechRecognition

parser = argparse.ArgumentParser()
parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4], help="training seeds")
parser.add_argument("--text-to-image", action="store_true", help="also time the text-to-image demo stop")
args = parser.parse_args()
TASK = "automatic-speech-recognition"
print(cpu_line(), flush=True)  # the figures below depend on it


def cpu() -> float:
    """CPU seconds of this process and its finished children (user + system)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


spent: dict[str, float] = defaultdict(float)


@contextmanager
def phase(name: str):
    started = cpu()
    yield
    spent[name] += cpu() - started


def timed(owner, attribute: str, name: str):
    """Count the CPU time of every call of owner.attribute under ``name``."""
    original = getattr(owner, attribute)

    def wrapper(*a, **k):
        with phase(name):
            return original(*a, **k)

    setattr(owner, attribute, wrapper)


def one_seed(seed: int, folder: Path) -> dict:
    settings = dict(SpeechRecognition.demo_config)
    train_size, eval_size = settings.pop("train_size"), settings.pop("eval_size")
    spent.clear()
    started = cpu()
    with phase("toy data"):
        train, held_out = testing.toy_dataset(TASK, train_size, seed=0), testing.toy_dataset(TASK, eval_size, seed=1)
    with phase("tiny model + load"):
        zoo = taskzoo.load(TASK, model=testing.tiny_model(TASK, folder / "tiny"), device="cpu")
    timed(zoo, "collate", "collate (decode, features, labels)")
    timed(zoo, "training_step", "training forward")
    timed(zoo, "eval_step", "eval forward + decode")
    with phase("evaluation before"):
        zoo.evaluate(held_out)
    with phase("fine-tuning (all)"):
        result = zoo.finetune(train, eval=held_out, output_dir=str(folder / "run"), progress=False,
                              save_checkpoints=False, seed=seed, **settings)
    with phase("predict one"):
        zoo.predict(held_out[0]["audio"])
    total = cpu() - started
    evaluations = sum("eval_wer" in r for r in result.history)
    return {"wer": result.final_metrics["wer"], "cer": result.final_metrics["cer"], "steps": result.steps,
            "evaluations": evaluations, "total": total, "phases": dict(spent)}


def main():
    quiet_libraries()
    torch.set_num_threads(1)
    print(f"demo_config: {SpeechRecognition.demo_config}")
    with tempfile.TemporaryDirectory() as scratch:
        warm = cpu()
        testing.toy_dataset(TASK, 1, seed=0)  # imports and the word bank, once per process (as in the demo)
        print(f"first toy_dataset call (imports, word bank): {cpu() - warm:.1f} CPU s")
        for seed in args.seeds:
            row = one_seed(seed, Path(scratch) / f"seed-{seed}")
            print(f"seed {seed}: WER {row['wer']:.3f} CER {row['cer']:.3f}, {row['steps']} steps, "
                  f"{row['evaluations']} evaluations, {row['total']:.1f} CPU s")
            for name, seconds in row["phases"].items():
                print(f"    {name:38} {seconds:6.1f}")
        if args.text_to_image:
            started = cpu()
            row = demo_task("text-to-image", Path(scratch) / "t2i", progress=False, say=lambda text: None)
            print(f"text-to-image demo stop: {cpu() - started:.1f} CPU s, eval_loss {row['before']:.3f} -> "
                  f"{row['after']:.3f}")


if __name__ == "__main__":
    main()
