import pytest

import taskzoo
from taskzoo.models import resolve_model


def test_local_folder_resolves(tiny_model_path):
    path = tiny_model_path("text-classification")
    assert resolve_model(str(path)) == path


def test_packaged_model_resolves_by_short_name_and_hub_id(minilm_path):
    assert resolve_model("all-MiniLM-L6-v2") == minilm_path
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2") == minilm_path


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(taskzoo.ModelNotFoundError, match="does not exist"):
        taskzoo.load("text-classification", model=str(tmp_path / "nowhere"))


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(taskzoo.ModelNotFoundError, match="not a model.*config.json"):
        taskzoo.load("text-classification", model=tmp_path)


def test_unknown_hub_id_says_what_was_tried_and_how_to_pass_a_path(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(taskzoo.ModelNotFoundError) as raised:
        taskzoo.load("text-classification", model="no-such-org/no-such-model")
    message = str(raised.value)
    assert "no-such-org/no-such-model" in message
    assert "Hugging Face cache" in message and constants.HF_HUB_CACHE in message
    assert "pass a local folder" in message
    assert "Traceback" not in message


def test_default_model_error_names_the_pinned_default(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(taskzoo.ModelNotFoundError, match="distilbert-base-uncased-finetuned-sst-2-english.*714eb0f"):
        taskzoo.load("text-classification")


def test_library_progress_bars_are_hidden_in_taskzoo_calls_and_kept_for_the_users_own(tmp_path, capsys):
    import datasets
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as transformers_logging

    from taskzoo.testing import tiny_model

    # The test session hides them globally (conftest); a user has them on.
    transformers_logging.enable_progress_bar()
    datasets.enable_progress_bars()
    try:
        path = tiny_model("text-classification", tmp_path / "tiny")
        zoo = taskzoo.load("text-classification", model=path, device="cpu")
        (tmp_path / "rows.csv").write_text("text,label\ngood film,positive\nbad plot,negative\n")
        zoo.finetune(str(tmp_path / "rows.csv"), max_steps=1, progress=False, output_dir=str(tmp_path / "run"))
        zoo.evaluate(str(tmp_path / "rows.csv"))
        zoo.save(tmp_path / "saved")
        ours = capsys.readouterr().err
        AutoModelForSequenceClassification.from_pretrained(path).save_pretrained(tmp_path / "users-own")
        theirs = capsys.readouterr().err
        assert transformers_logging.is_progress_bar_enabled() and datasets.is_progress_bar_enabled()
    finally:
        transformers_logging.disable_progress_bar()
        datasets.disable_progress_bars()
    for bar in ("Loading weights", "Writing model shards", "Generating train split"):
        assert bar not in ours
    assert "Loading weights" in theirs and "Writing model shards" in theirs  # the user's own calls keep them


@pytest.mark.parametrize("verbosity, shown", [("warning", False), ("info", True)])
def test_load_report_is_hidden_in_taskzoo_calls_unless_transformers_is_verbose(verbosity, shown, tiny_model_path):
    import logging

    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as transformers_logging

    class Records(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    backbone = tiny_model_path("sentence-similarity")  # no classification head: transformers reports it missing
    records, logger = Records(), logging.getLogger("transformers.modeling_utils")
    previous = transformers_logging.get_verbosity()
    logger.addHandler(records)
    transformers_logging.set_verbosity(getattr(logging, verbosity.upper()))  # a user's default is warning
    try:
        zoo = taskzoo.load("text-classification", model=backbone, device="cpu")
        ours = list(records.messages)
        AutoModelForSequenceClassification.from_pretrained(backbone)  # the user's own call
    finally:
        transformers_logging.set_verbosity(previous)
        logger.removeHandler(records)
    assert not zoo.head_trained and zoo.new_weights == ("classifier.bias", "classifier.weight")
    assert any("LOAD REPORT" in message for message in ours) is shown
    assert any("LOAD REPORT" in message for message in records.messages[len(ours):])  # kept for the user's own


def test_what_a_model_folder_takes_is_read_from_its_files(tiny_model_path, tmp_path):
    from taskzoo.models import describe_model, model_inputs

    expected = {"text-classification": ({"text"}, "BertForSequenceClassification"),
                "image-classification": ({"image"}, "ViTForImageClassification"),
                "automatic-speech-recognition": ({"audio", "text"}, "Wav2Vec2ForCTC"),
                "text-to-image": ({"pipeline"}, "StableDiffusionPipeline")}
    for task, found in expected.items():
        assert model_inputs(tiny_model_path(task)) == found
    assert describe_model(*expected["automatic-speech-recognition"]) == "an audio model (Wav2Vec2ForCTC)"
    # Without processor files, transformers' processor tables for its model type say it.
    (tmp_path / "config.json").write_text('{"model_type": "vit", "architectures": ["ViTModel"]}')
    assert model_inputs(tmp_path) == ({"image"}, "ViTModel")
    (tmp_path / "config.json").write_text('{"model_type": "no-such-type"}')
    assert model_inputs(tmp_path) == (set(), "no-such-type")


@pytest.mark.parametrize("task, model, message", [
    ("sentence-similarity", "image-classification", "holds an image model (ViTForImageClassification); "
     "sentence-similarity needs a sentence-transformers model, or a text encoder with a tokenizer."),
    ("translation", "image-classification", "holds an image model (ViTForImageClassification); translation needs"),
    ("automatic-speech-recognition", "translation", "holds a text model (MarianMTModel); automatic-speech-recognition "
     "needs a speech model with a feature extractor"),
    ("object-detection", "automatic-speech-recognition", "holds an audio model (Wav2Vec2ForCTC); object-detection"),
    ("text-classification", "text-to-image", "holds a diffusers pipeline (StableDiffusionPipeline); text-classif"),
    ("text-classification", "automatic-speech-recognition", "holds an audio model (Wav2Vec2ForCTC), which "
     "text-classification cannot load: it needs a text model with a tokenizer"),
])
def test_a_model_for_other_inputs_is_named_with_what_the_task_needs(task, model, message, tiny_model_path):
    with pytest.raises(taskzoo.ModelNotFoundError) as raised:
        taskzoo.load(task, model=tiny_model_path(model), device="cpu")
    assert str(raised.value).startswith(f"{tiny_model_path(model)} {message}"), str(raised.value)
