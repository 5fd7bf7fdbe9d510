"""predict(compile=True): the same outputs as eager predict, and never stale weights after fine-tuning.

Compiling takes seconds even for tiny models, so the fast test compiles the quickest one (text-classification)
for one batch shape, before and after fine-tuning; the other tasks' compile targets run in the slow set.
"""

import pytest

import taskzoo
from taskzoo.testing import toy_dataset


def scores(outputs):
    return [guess["score"] for ranked in outputs for guess in ranked]


def labels(outputs):
    return [[guess["label"] for guess in ranked] for ranked in outputs]


@pytest.mark.slow  # the text-classification test below covers the same two properties in half the time
def test_compiled_image_classification_matches_eager_and_follows_finetuning(tiny_model_path):
    zoo = taskzoo.load("image-classification", model=tiny_model_path("image-classification"), device="cpu")
    images = [zoo.input_of(row) for row in toy_dataset("image-classification", 12, seed=3)]
    eager = zoo.predict(images, batch_size=4)
    compiled = zoo.predict(images, batch_size=4, compile=True)
    assert labels(compiled) == labels(eager)
    assert scores(compiled) == pytest.approx(scores(eager), abs=1e-4)
    assert zoo.model.__class__.__name__ == "ViTForImageClassification"  # the eager model is put back

    zoo.finetune(toy_dataset("image-classification", 64), epochs=1, batch_size=16, learning_rate=3e-3,
                 progress=False, save_checkpoints=False)
    tuned = zoo.predict(images, batch_size=4)
    assert scores(tuned) != scores(eager)
    assert scores(zoo.predict(images, batch_size=4, compile=True)) == pytest.approx(scores(tuned), abs=1e-4)


def test_compiled_text_classification_matches_eager_and_follows_finetuning(tiny_model_path):
    """The task docs/benchmarks.md quotes compile speed-ups for: one batch shape, compiled before and after
    fine-tuning."""
    zoo = taskzoo.load("text-classification", model=tiny_model_path("text-classification"), device="cpu")
    texts = ["a good film", "an awful plot", "good good plot", "the film was bad"]
    eager = zoo.predict(texts, batch_size=4, top_k=2)
    compiled = zoo.predict(texts, batch_size=4, top_k=2, compile=True)
    assert labels(compiled) == labels(eager)
    assert scores(compiled) == pytest.approx(scores(eager), abs=1e-4)
    assert type(zoo.model).__name__ == "BertForSequenceClassification"  # the eager model is put back
    assert type(zoo._compiled[1]).__name__ == "OptimizedModule"  # and the compiled one kept for the next call

    # Freezing folds the weights into the compiled code: after fine-tuning (same module, new weights)
    # compile=True must predict with the new weights, not the ones it compiled.
    zoo.finetune(toy_dataset("text-classification", 64), epochs=1, batch_size=16, learning_rate=3e-3,
                 progress=False, save_checkpoints=False)
    tuned = zoo.predict(texts, batch_size=4, top_k=2)
    assert scores(tuned) != scores(eager)
    assert scores(zoo.predict(texts, batch_size=4, top_k=2, compile=True)) == pytest.approx(scores(tuned), abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["text-classification", "sentence-similarity", "automatic-speech-recognition"])
def test_compiled_predict_matches_eager(task, tiny_model_path):
    zoo = taskzoo.load(task, model=tiny_model_path(task), device="cpu")
    inputs = [zoo.input_of(row) for row in toy_dataset(task, 8, seed=3)]
    eager = zoo.predict(inputs, batch_size=4)
    compiled = zoo.predict(inputs, batch_size=4, compile=True)
    if task == "automatic-speech-recognition":
        assert compiled == eager
    else:
        assert [out["score"] for out in compiled] == pytest.approx([out["score"] for out in eager], abs=1e-4)


@pytest.mark.slow
def test_compiled_text_to_image_matches_eager(tiny_model_path):
    zoo = taskzoo.load("text-to-image", model=tiny_model_path("text-to-image"), device="cpu")
    options = dict(num_inference_steps=2, seed=0)
    eager = zoo.predict("a red square", **options)["image"]
    compiled = zoo.predict("a red square", compile=True, **options)["image"]
    import numpy as np

    assert np.abs(np.asarray(eager, dtype=int) - np.asarray(compiled, dtype=int)).max() <= 2
    assert type(zoo.pipeline.unet).__name__ == "UNet2DConditionModel"
