"""Every recipe runs as a user runs it — a subprocess with --model, --dataset and --max-steps — on the tiny
model and toy data, and writes a loadable model and a metrics line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import taskzoo
from taskzoo.testing import toy_dataset

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def write_text_splits(task: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    toy_dataset(task, 32, seed=0).to_csv(folder / "train.csv")
    toy_dataset(task, 16, seed=1).to_csv(folder / "validation.csv")
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
    from taskzoo.tasks.object_detection import write_coco

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


# task -> (recipe script, extra arguments, writer of a local dataset folder)
CASES = {
    "image-classification": ("image_classification.py", ["--label-column", "label"], write_image_class_folders),
    "image-segmentation": ("image_segmentation.py", ["--image-column", "image", "--mask-column", "mask"],
                           write_image_mask_folders),
    "object-detection": ("object_detection.py", [], write_coco_splits),
    "text-classification": ("text_classification.py", ["--text-column", "text"], write_text_splits),
    "sentence-similarity": ("sentence_similarity.py", [], write_text_splits),
    "translation": ("translation.py", ["--num-beams", "1"], write_jsonl_splits),
    "text-to-image": ("text_to_image.py", [], write_image_caption_folders),
    "automatic-speech-recognition": ("automatic_speech_recognition.py", [], write_audio_folders),
}


@pytest.mark.parametrize("task", sorted(CASES))
def test_recipe_runs_on_the_tiny_model(task, tiny_model_path, tmp_path):
    script, extra, write = CASES[task]
    dataset = write(task, tmp_path / "data")
    run = subprocess.run([sys.executable, RECIPES / script, "--model", tiny_model_path(task), "--dataset", dataset,
                          "--max-steps", "3", "--batch-size", "4", "--output-dir", tmp_path / "out", *extra],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["steps"] == 3
    primary = taskzoo.load(task, model=tiny_model_path(task)).primary_metric
    assert primary in report["metrics"]
    assert (tmp_path / "out" / "log.jsonl").exists()
    taskzoo.load(task, model=tmp_path / "out" / "final")  # the saved model opens again


def test_every_task_has_a_recipe():
    missing = [task for task in taskzoo.tasks() if task not in CASES]
    assert not missing, f"tasks without a recipe test: {missing}"
