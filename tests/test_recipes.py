"""Every recipe runs as a user runs it — a script with --model, --dataset and --max-steps — on the tiny
model and toy data, and writes a loadable model and a metrics line. The default run runs each script in this
process (runpy, its own argv and folder: a process of its own spends seconds importing torch and transformers);
the slow run runs each in a subprocess, and the tests of a recipe's errors below always do."""

import contextlib
import io
import json
import os
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import taskzoo
from taskzoo.testing import toy_dataset

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def write_text_splits(task: str, folder: Path) -> Path:
    """train.csv and dev.csv (a held-out split by another usual name than validation)."""
    folder.mkdir(parents=True, exist_ok=True)
    toy_dataset(task, 32, seed=0).to_csv(folder / "train.csv")
    toy_dataset(task, 16, seed=1).to_csv(folder / "dev.csv")
    return folder


def write_jsonl_splits(task: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    toy_dataset(task, 32, seed=0).to_json(folder / "train.jsonl")
    toy_dataset(task, 16, seed=1).to_json(folder / "validation.jsonl")
    return folder


def write_image_caption_folders(task: str, folder: Path) -> Path:
    """train/ and validation/ image folders, each with a metadata.jsonl, as datasets' imagefolder reads."""
    for split, size, seed in (("train", 16, 0), ("validation", 8, 1)):
        (folder / split).mkdir(parents=True)
        rows = toy_dataset(task, size, seed=seed)
        lines = []
        for i, row in enumerate(rows):
            row["image"].save(folder / split / f"{i:03d}.png")
            lines.append(json.dumps({"file_name": f"{i:03d}.png", "text": row["text"]}))
        (folder / split / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def write_image_class_folders(task: str, folder: Path) -> Path:
    """train/ and validation/ folders of PNGs, one sub-folder per class."""
    for split, data in (("train", toy_dataset(task, 16, seed=0)), ("validation", toy_dataset(task, 8, seed=1))):
        for i, row in enumerate(data):
            (folder / split / data.features["label"].names[row["label"]]).mkdir(parents=True, exist_ok=True)
            row["image"].save(folder / split / data.features["label"].names[row["label"]] / f"{i}.png")
    return folder


def write_image_mask_folders(task: str, folder: Path) -> Path:
    """train/ and validation/ folders, each with images/ (JPEG) and masks/ (PNG) matched by name."""
    for split, data in (("train", toy_dataset(task, 16, seed=0)), ("validation", toy_dataset(task, 8, seed=1))):
        (folder / split / "images").mkdir(parents=True)
        (folder / split / "masks").mkdir()
        for i, row in enumerate(data):
            row["image"].save(folder / split / "images" / f"{i:04}.jpg")
            row["mask"].save(folder / split / "masks" / f"{i:04}.png")
    return folder


def write_coco_splits(task: str, folder: Path) -> Path:
    """train.json and validation.json in COCO format, their images in images/."""
    from taskzoo.detection_data import write_coco

    write_coco(toy_dataset(task, 16, seed=0), folder / "train.json")
    write_coco(toy_dataset(task, 8, seed=1), folder / "validation.json")
    return folder


def write_audio_folders(task: str, folder: Path) -> Path:
    """train/ and validation/ audio folders, each with a metadata.csv, as datasets' audiofolder reads."""
    import shutil

    for split, size, seed in (("train", 8, 0), ("validation", 4, 1)):
        (folder / split).mkdir(parents=True)
        rows = toy_dataset(task, size, seed=seed)
        lines = ["file_name,text"]
        for i, row in enumerate(rows):
            shutil.copy(row["audio"], folder / split / f"{i:03d}.wav")
            lines.append(f"{i:03d}.wav,{row['text']}")
        (folder / split / "metadata.csv").write_text("\n".join(lines) + "\n")
    return folder


# task -> (recipe script, extra arguments, writer of a local dataset folder). A local folder's columns are the
# task's own names, which every recipe reads without column flags (as the command line does).
CASES = {
    "image-classification": ("image_classification.py", [], write_image_class_folders),
    "image-segmentation": ("image_segmentation.py", [], write_image_mask_folders),
    "object-detection": ("object_detection.py", [], write_coco_splits),
    "text-classification": ("text_classification.py", [], write_text_splits),
    "sentence-similarity": ("sentence_similarity.py", [], write_text_splits),
    "translation": ("translation.py", ["--num-beams", "1"], write_jsonl_splits),
    "text-to-image": ("text_to_image.py", [], write_image_caption_folders),
    "automatic-speech-recognition": ("automatic_speech_recognition.py", [], write_audio_folders),
}


def run_in_process(script: Path, args: list, folder: Path, monkeypatch) -> str:
    """``python SCRIPT ARGS`` in ``folder``, run in this process as __main__; what it printed."""
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "argv", [str(script), *map(str, args)])
    monkeypatch.syspath_prepend(str(RECIPES))
    monkeypatch.delitem(sys.modules, "_common", raising=False)  # read afresh: it names the script from argv
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        runpy.run_path(str(script), run_name="__main__")
    return printed.getvalue()


@pytest.mark.parametrize("processes", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["in-process", "subprocess"])
@pytest.mark.parametrize("task", sorted(CASES))
def test_recipe_runs_on_the_tiny_model(task, processes, tiny_model_path, tmp_path, monkeypatch):
    script, extra, write = CASES[task]
    dataset = write(task, tmp_path / "data")
    args = ["--model", tiny_model_path(task), "--dataset", dataset, "--max-steps", "3", "--batch-size", "4",
            "--output-dir", tmp_path / "out", *extra]
    if processes:
        run = subprocess.run([sys.executable, RECIPES / script, *args], capture_output=True, text=True, timeout=600,
                             cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-3000:]
        printed = run.stdout
    else:
        printed = run_in_process(RECIPES / script, args, tmp_path, monkeypatch)
    report = json.loads(printed.strip().splitlines()[-1])
    assert report["steps"] == 3
    primary = taskzoo.load(task, model=tiny_model_path(task)).primary_metric
    assert primary in report["metrics"]
    assert (tmp_path / "out" / "log.jsonl").exists()
    taskzoo.load(task, model=tmp_path / "out" / "final")  # the saved model opens again


def test_every_task_has_a_recipe():
    missing = [task for task in taskzoo.task_names() if task not in CASES]
    assert not missing, f"tasks without a recipe test: {missing}"


def run_recipe(script: str, *args, cwd):
    return subprocess.run([sys.executable, RECIPES / script, *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


@pytest.mark.slow  # two recipe runs: about 25 s of CPU
def test_a_recipe_refuses_to_replace_its_run_and_gives_the_command_that_does(tiny_model_path, tmp_path):
    data = write_text_splits("text-classification", tmp_path / "data")  # columns text, label; dev.csv
    args = ["--model", tiny_model_path("text-classification"), "--dataset", data, "--max-steps", "3",
            "--batch-size", "4", "--output-dir", tmp_path / "out"]
    first = run_recipe("text_classification.py", *args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "accuracy" in json.loads(first.stdout.splitlines()[-1])["metrics"]  # scored on dev.csv

    again = run_recipe("text_classification.py", *args, cwd=tmp_path)
    assert again.returncode == 1 and "Traceback" not in again.stderr
    command = shlex.join(["python", str(RECIPES / "text_classification.py"), *map(str, args), "--overwrite"])
    out = tmp_path / "out"
    assert again.stderr.endswith(f"holds a finished run of 3 steps ({out / 'best'}, {out / 'last'}). Choose another "
                                 f"--output-dir, or replace it:\n  {command}\n"), again.stderr


def test_a_recipe_says_in_one_line_when_there_is_no_evaluation_data(tmp_path):
    toy_dataset("text-classification", 8).to_csv(tmp_path / "train.csv")
    code = f"import sys; sys.path.insert(0, {str(RECIPES)!r}); from _common import load_splits; " \
           f"print(load_splits({str(tmp_path)!r}))"
    read = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert read.returncode == 0, read.stderr
    assert read.stdout.strip() == repr((str(tmp_path / "train.csv"), None))
    assert read.stderr == (f"-c: no evaluation data in {tmp_path} (no validation, valid, val, eval, dev or test "
                           "split): fine-tuning without evaluation.\n")


def test_a_recipe_without_the_hub_says_so_in_one_line_naming_the_local_alternative(tmp_path):
    offline = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, RECIPES / "text_classification.py", "--max-steps", "20"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=offline)
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("text_classification.py: --dataset stanfordnlp/sst2 is not a local file or folder, "
                                  "and the Hugging Face hub could not give it")
    assert "Pass --dataset a local folder instead: train.* and validation.* (or dev.*) files" in done.stderr


@pytest.mark.parametrize("task,folder,sizes", [
    ("text-classification", "movie-reviews", (30, 72)),
    ("sentence-similarity", "sentence-pairs", (60, 52)),
])
def test_the_real_sentences_the_recipes_readme_measures_on_read_as_their_task(task, folder, sizes):
    """recipes/README.md measures text classification and sentence similarity on recipes/data/: both splits read
    with the task's own columns, and no held-out row repeats a training row."""
    from datasets import load_dataset

    splits = [load_dataset("csv", data_files=str(RECIPES / "data" / folder / name), split="train")
              for name in ("train.csv", "dev.csv")]
    assert tuple(len(split) for split in splits) == sizes
    columns = {"text-classification": {"text", "label"}, "sentence-similarity": {"sentence1", "sentence2", "score"}}
    assert all(set(split.column_names) == columns[task] for split in splits)
    rows = [set(map(tuple, (row.values() for row in split))) for split in splits]
    assert not rows[0] & rows[1]
    if task == "sentence-similarity":
        assert all(0 <= score <= 5 for split in splits for score in split["score"])
    else:
        assert set(splits[0]["label"]) == set(splits[1]["label"]) == {"positive", "negative"}
