"""Every row of docs/errors.md: the bad input, and the message taskzoo answers with (tested by its text)."""

import math
import re
import warnings
from pathlib import Path

import pytest

import taskzoo
from taskzoo import audio, data
from taskzoo.errors import DataError, ExistingRunError, ModelNotFoundError, TrainingError, UnknownTaskError
from taskzoo.testing import toy_dataset

DOC = Path(__file__).resolve().parent.parent / "docs" / "errors.md"


def text_zoo(tiny_model_path):
    return taskzoo.load("text-classification", model=tiny_model_path("text-classification"), device="cpu")


def similarity_zoo(tiny_model_path):
    return taskzoo.load("sentence-similarity", model=tiny_model_path("sentence-similarity"), device="cpu")


def corrupted_image(tmp_path):
    path = tmp_path / "holiday.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    data.load_image(str(path))


def long_text(tiny_model_path, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        text_zoo(tiny_model_path).predict(["good " * 500, "bad " * 500, "fine"])
    raise UserWarning(" | ".join(str(w.message) for w in caught if "truncated" in str(w.message)))


def cut_translation(tiny_model_path):
    zoo = taskzoo.load("translation", model=tiny_model_path("translation"), device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        zoo.predict(["the cat", "a dog", "the red bird"], batch_size=1, max_new_tokens=1)
    raise UserWarning(" | ".join(str(w.message) for w in caught if "length limit" in str(w.message)))


def folder_with_custom_code(tiny_model_path, tmp_path, model_type="custom-bert"):
    """The tiny text classifier, with a config that names code in the folder (auto_map), as hub repos with
    custom architectures do. The code, if ever run, leaves a file ``custom.py.ran`` behind."""
    import json
    import shutil

    folder = tmp_path / "remote"
    shutil.copytree(tiny_model_path("text-classification"), folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type=model_type, auto_map={"AutoConfig": "custom.CustomConfig",
                                                   "AutoModelForSequenceClassification": "custom.CustomModel"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "custom.py").write_text(
        "open(__file__ + '.ran', 'w').close()\n"
        "from transformers import BertConfig, BertForSequenceClassification\n\n\n"
        "class CustomConfig(BertConfig):\n    model_type = 'custom-bert'\n\n\n"
        "class CustomModel(BertForSequenceClassification):\n    config_class = CustomConfig\n")
    return folder


def bad_mask(tiny_model_path):
    import numpy as np
    from PIL import Image

    mask = np.zeros((16, 16), np.uint8)
    mask[2:5, 2:5] = 9
    zoo = taskzoo.load("image-segmentation", model=tiny_model_path("image-segmentation"), device="cpu")
    zoo.evaluate([{"image": Image.new("RGB", (16, 16)), "mask": Image.fromarray(mask)}])


def bad_boxes(tiny_model_path, bbox):
    from PIL import Image

    zoo = taskzoo.load("object-detection", model=tiny_model_path("object-detection"), device="cpu")
    rows = [{"image": Image.new("RGB", (50, 40)), "objects": {"bbox": bbox, "category": ["red"] * len(bbox)}}]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        zoo.evaluate(rows)
    raise UserWarning(" | ".join(str(w.message) for w in caught if "boxes" in str(w.message)))


def rerun_into_an_interrupted_run(tiny_model_path, tmp_path):
    """A run interrupted (as by Ctrl-C) after its checkpoint at step 2, then the same call again."""
    from taskzoo.errors import TrainingInterrupted

    zoo, options = text_zoo(tiny_model_path), dict(max_steps=4, checkpoint_every=2, progress=False, plot=False)
    steps = []

    def ctrl_c_in_step_3(model):
        steps.append(model)
        if len(steps) == 3:
            raise KeyboardInterrupt

    zoo.on_optimizer_step = ctrl_c_in_step_3
    with pytest.raises(TrainingInterrupted):
        zoo.finetune(toy_dataset("text-classification", 32), output_dir=str(tmp_path / "run"), **options)
    text_zoo(tiny_model_path).finetune(toy_dataset("text-classification", 32), output_dir=str(tmp_path / "run"),
                                       **options)


def silent_clip(tiny_model_path, tmp_path):
    import numpy as np
    import soundfile

    soundfile.write(tmp_path / "silence.wav", np.zeros(16000, np.float32), 16000)
    zoo = taskzoo.load("automatic-speech-recognition", model=tiny_model_path("automatic-speech-recognition"),
                       device="cpu")
    zoo.evaluate([{"audio": str(tmp_path / "silence.wav"), "text": "one two"}])


def first_warning(run) -> None:
    """Run ``run`` twice; raise what taskzoo warned the first time, after checking that it warned only then."""
    from taskzoo.errors import TaskzooWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run()
        first = [str(w.message) for w in caught if issubclass(w.category, TaskzooWarning)]
        run()
    assert len([w for w in caught if issubclass(w.category, TaskzooWarning)]) == len(first), "warned twice"
    raise UserWarning(" | ".join(first))


def untrained_head(tiny_model_path):
    # A sentence-transformers folder (a BERT without a classification head), as all-MiniLM-L6-v2 is.
    zoo = taskzoo.load("text-classification", model=tiny_model_path("sentence-similarity"), device="cpu")
    first_warning(lambda: zoo.predict("hello"))


def classifier_for_similarity(tiny_model_path):
    zoo = taskzoo.load("sentence-similarity", model=tiny_model_path("text-classification"), device="cpu")
    first_warning(lambda: zoo.predict(("a cat", "a dog")))


# The row's first cell in docs/errors.md -> (what to run, the exception class, a pattern of its message).
CASES = {
    "Unknown task": (lambda m, t: taskzoo.load("text-clasification"), UnknownTaskError,
                     r"Unknown task 'text-clasification'. Did you mean 'text-classification'\?"),
    "Model path that does not exist": (lambda m, t: taskzoo.load("text-classification", model=str(t / "nope")),
                                       ModelNotFoundError, r"Model folder .*nope' does not exist"),
    "Folder that is not a model": (lambda m, t: taskzoo.load("text-classification", model=t), ModelNotFoundError,
                                   r"is a folder but not a model: it has none of config.json"),
    "Hub id that is not cached, offline": (
        lambda m, t: taskzoo.load("text-classification", model="someone/missing"), ModelNotFoundError,
        r"Could not find model 'someone/missing'. Tried:.*Hugging Face cache.*pass a local folder"),
    "Model of the wrong kind": (
        lambda m, t: taskzoo.load("image-classification", model=m("object-detection")), ModelNotFoundError,
        r"^\S+ holds an image model \(RTDetrForObjectDetection\), which image-classification cannot load: it needs "
        r"an image classification model with an image processor \(ViT, ConvNeXT, ResNet, ...\).$"),
    "Text model given to an image task": (
        lambda m, t: taskzoo.load("image-classification", model=m("text-classification")), ModelNotFoundError,
        r"^\S+ holds a text model \(BertForSequenceClassification\); image-classification needs an image "
        r"classification model with an image processor"),
    "Image model given to a text task": (
        lambda m, t: taskzoo.load("text-classification", model=m("image-classification")), ModelNotFoundError,
        r"^\S+ holds an image model \(ViTForImageClassification\); text-classification needs a text model with "
        r"a tokenizer"),
    "Text model given to text-to-image": (
        lambda m, t: taskzoo.load("text-to-image", model=m("text-classification")), ModelNotFoundError,
        r"holds a text model \(BertForSequenceClassification\); text-to-image needs a diffusers text-to-image "
        r"pipeline \(model_index.json\)"),
    "Model without a trained head": (
        lambda m, t: untrained_head(m), UserWarning,
        r"^text-classification: \S+ holds no trained head for this task \(classifier.bias, classifier.weight were "
        r"newly initialised\), so its outputs are random: fine-tune it first.$"),
    "Text classifier given to sentence-similarity": (
        lambda m, t: classifier_for_similarity(m), UserWarning,
        r"^sentence-similarity: \S+ holds a BertForSequenceClassification, not a sentence-transformers model "
        r"\(it has no modules.json\): .* fine-tune it first.$"),
    "Unknown predict option": (lambda m, t: text_zoo(m).predict("good", topk=2), TypeError,
                               r"^predict\(\) got an unknown option 'topk'. Did you mean 'top_k'\? Options: .*top_k.$"),
    "Predict option of the wrong type": (lambda m, t: text_zoo(m).predict("good", top_k="two"), ValueError,
                                         r"^top_k must be a positive integer; got 'two'.$"),
    "Mask value beyond the number of labels": (
        lambda m, t: bad_mask(m), DataError,
        r"Column 'mask', row 0: value 9 is not a class of the model, which has 4 labels"),
    "Box outside the image or without area": (
        lambda m, t: bad_boxes(m, [[40, 30, 20, 20], [10, 10, -5, 8], [5, 5, 10, 10]]), UserWarning,
        r"^object-detection: of 3 boxes in the evaluation data, 1 crossed the image border .* and 1 were dropped"),
    "Bounding box that is not four numbers": (lambda m, t: bad_boxes(m, [[1, 2, 3]]), DataError,
                                              r"Row 0: objects.bbox holds \[1, 2, 3\], not \[x, y, width, height\]"),
    "Empty audio file": (lambda m, t: (t.joinpath("empty.wav").write_bytes(b""),
                                       audio.load_audio(str(t / "empty.wav"), 16000)),
                         DataError, r"Audio .*empty.wav could not be decoded"),
    "File that is not audio": (lambda m, t: (t.joinpath("notes.wav").write_text("not audio"),
                                             audio.load_audio(str(t / "notes.wav"), 16000)),
                               DataError, r"Audio .*notes.wav could not be decoded \(not audio, or corrupted\)"),
    "Silent audio with a transcript": (
        lambda m, t: silent_clip(m, t), DataError,
        r"Audio .*silence.wav is silent \(every sample is 0\) but its transcript is 'one two'"),
    "Empty data": (lambda m, t: text_zoo(m).evaluate([]), DataError, r"The data is an empty list"),
    "Missing column": (lambda m, t: text_zoo(m).evaluate([{"review": "good", "label": "positive"}]), DataError,
                       r"no column 'text' .*Columns present: \['review', 'label'\].*columns=\{'your_column': 'text'\}"),
    "Label not in the model's label set": (
        lambda m, t: text_zoo(m).evaluate([{"text": "meh", "label": "neutral"}]), DataError,
        r"labels the model does not know: \['neutral'\]. The model's labels are \['negative', 'positive'\]"),
    "Column that mixes types": (
        lambda m, t: text_zoo(m).evaluate([{"text": "a", "label": 1}, {"text": "b", "label": "x"}]), DataError,
        r"do not form a table \(a column mixes types\?\)"),
    "Corrupted or truncated image": (lambda m, t: corrupted_image(t), DataError,
                                     r"Image .*holiday.jpg is corrupted or not an image"),
    "NaN similarity score": (lambda m, t: similarity_zoo(m).evaluate(
        [{"sentence1": "a", "sentence2": "b", "score": 0.5}, {"sentence1": "a", "sentence2": "b", "score": math.nan}]),
        DataError, r"Column 'score' must hold finite numbers; row 1 has nan"),
    "Out-of-range similarity score": (lambda m, t: similarity_zoo(m).evaluate(
        [{"sentence1": "a", "sentence2": "b", "score": 9.0}]), DataError,
        r"Column 'score' must lie in \[0, 1\] or \[0, 5\]; found values from 9.0 to 9.0"),
    "Text longer than the model's maximum": (
        lambda m, t: long_text(m, t), UserWarning,
        r"^text-classification: 2 input\(s\) were longer than the model's maximum"),
    "Empty prompt list": (lambda m, t: taskzoo.load("text-to-image", model=m("text-to-image")).predict([]),
                          ValueError, r"needs at least one prompt; got an empty list"),
    "Batch size of 0": (lambda m, t: text_zoo(m).predict(["good"], batch_size=0), ValueError,
                        r"batch_size must be a positive integer; got 0"),
    "`compile=True` for a model that generates": (
        lambda m, t: taskzoo.load("translation", model=m("translation")).predict("one", compile=True), ValueError,
        r"^translation: compile=True is not supported for this model: its predict generates step by step"),
    "Negative `num_workers`": (lambda m, t: text_zoo(m).predict(["good"], num_workers=-1), ValueError,
                               r"num_workers must be a non-negative integer; got -1"),
    "Mixed input types in one list": (
        lambda m, t: text_zoo(m).predict(["good", ("a", "b")]), ValueError,
        r"mixes kinds of input: text \(first at position 0\), text pair \(first at position 1\)"),
    "Unknown fine-tuning option": (lambda m, t: text_zoo(m).finetune(toy_dataset("text-classification", 8),
                                                                     learnig_rate=1e-3),
                                   TypeError, r"unknown option 'learnig_rate'. Did you mean 'learning_rate'\?"),
    "Output folder holding other files": (lambda m, t: (t.joinpath("notes.txt").write_text("mine"),
                                                        text_zoo(m).finetune(toy_dataset("text-classification", 8),
                                                                             output_dir=str(t))), TrainingError,
        r"already holds files that taskzoo did not write \(notes.txt\)"),
    "Output folder holding an earlier run": (lambda m, t: rerun_into_an_interrupted_run(m, t), ExistingRunError,
                                             (r"run holds an unfinished run: its last checkpoint is .*step-2 \(step 2 "
                                              r"of 4\)\. Resume it with resume_from='latest', or start over")),
    "Model folder with custom code, without `trust_remote_code=True`": (
        lambda m, t: taskzoo.load("text-classification", model=folder_with_custom_code(m, t)), ValueError,
        r"^The repository .*remote contains custom code which must be executed to correctly load the model.*"
        r"pass the argument `trust_remote_code=True` to allow custom code to be run"),
    "Generated text that reaches the length limit": (
        lambda m, t: cut_translation(m), UserWarning,
        r"^translation: 3 output\(s\) stopped at the length limit \(1 new tokens\) rather than at their end token "
        r"during predict, so they may be cut short; pass a larger max_new_tokens.$"),
}


def documented_rows() -> dict[str, str]:
    """Each row's first cell -> the exception it documents (``warning``: a UserWarning)."""
    rows = dict(re.findall(r"^\| ([^|]+?) \| `?([^|`]+?)`? \|", DOC.read_text(), re.M))
    return {row: kind for row, kind in rows.items() if row not in ("Bad input", "---")}


@pytest.mark.parametrize("row", sorted(CASES))
def test_documented_error(row, tiny_model_path, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    run, error, pattern = CASES[row]
    with pytest.raises(error) as raised:
        run(tiny_model_path, tmp_path)
    assert type(raised.value) is error  # the documented type itself, not merely a base class of it
    assert re.search(pattern, str(raised.value), re.S), str(raised.value)


def test_every_documented_row_is_tested_with_its_documented_type():
    rows = documented_rows()
    assert sorted(rows) == sorted(CASES), set(rows) ^ set(CASES)
    tested = {row: "warning" if error is UserWarning else error.__name__ for row, (_, error, _) in CASES.items()}
    assert rows == tested


def test_code_in_a_model_folder_runs_only_with_trust_remote_code(tiny_model_path, tmp_path, monkeypatch):
    from transformers import dynamic_module_utils

    folder = folder_with_custom_code(tiny_model_path, tmp_path)
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        taskzoo.load("text-classification", model=folder, device="cpu")
    assert not (folder / "custom.py.ran").exists()
    # A known model type with an auto_map: the built-in class loads it, and the folder's code stays unrun.
    known = folder_with_custom_code(tiny_model_path, tmp_path / "known", model_type="bert")
    assert taskzoo.load("text-classification", model=known, device="cpu").predict("good")["label"]
    assert not (known / "custom.py.ran").exists()
    # With the flag, taskzoo passes it on and transformers runs the folder's code (copied to a module cache).
    monkeypatch.setattr(dynamic_module_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    zoo = taskzoo.load("text-classification", model=folder, device="cpu", trust_remote_code=True)
    assert type(zoo.model).__name__ == "CustomModel" and zoo.predict("good")["label"]
    assert list((tmp_path / "modules").rglob("custom.py.ran"))
