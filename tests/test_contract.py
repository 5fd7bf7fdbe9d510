"""The task contract, run over every architecture family of the testing kit (taskzoo.testing.kit.KIT): one input
gives one output and a list of one a list of it; a batch predicts what one input at a time does; predict ->
fine-tune -> evaluate -> fine-tune again in one process (models that cache tensors, such as BEiT's relative
position index or DETR's position embeddings, must stay trainable), and the fine-tuned model, saved, reloads to
the same predictions; each strategy the kit says works trains, each it says is refused raises its reason. The docs'
families tables are rendered from the same entries, so what they claim is what runs here.
For each task's default family also: evaluating a stream and one request to the server."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

import taskzoo
from taskzoo.testing import toy_dataset
from taskzoo.testing.kit import KIT, STRATEGIES

PREDICT_OPTIONS = {"text-to-image": dict(num_inference_steps=2, seed=0)}  # enough to run the pipeline
# No charts: the contract is not about them (test_training_runs.py checks the chart), and each costs a quarter second.
TRAIN = dict(batch_size=4, learning_rate=1e-3, progress=False, save_checkpoints=False, plot=False)


def assert_close(got, expected, where="output", tolerance=1e-4):
    """Outputs alike: same structure and strings, floats to ``tolerance``, masks in 99 % of their pixels (a pixel
    on a tie between two classes may flip), images to 1 % of their range on average."""
    if isinstance(expected, Image.Image):
        assert isinstance(got, Image.Image) and got.size == expected.size, f"{where}: {got} vs {expected}"
        a, b = np.asarray(got, dtype=float), np.asarray(expected, dtype=float)
        if expected.mode == "L":
            assert (a != b).mean() <= 0.01, f"{where}: {(a != b).mean():.1%} of the mask differs"
        else:
            assert np.abs(a - b).mean() <= 2.55, f"{where}: the images differ by {np.abs(a - b).mean():.2f} on average"
    elif isinstance(expected, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(expected), f"{where}: {got} vs {expected}"
        for key in expected:
            assert_close(got[key], expected[key], f"{where}.{key}", tolerance)
    elif isinstance(expected, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(expected), \
            f"{where}: {got!r:.200} vs {expected!r:.200}"
        for i, (a, b) in enumerate(zip(got, expected)):
            assert_close(a, b, f"{where}[{i}]", tolerance)
    elif isinstance(expected, float):
        assert math.isclose(got, expected, rel_tol=tolerance, abs_tol=tolerance), f"{where}: {got} vs {expected}"
    elif isinstance(expected, np.ndarray):
        assert np.allclose(got, expected, rtol=tolerance, atol=tolerance), f"{where} differs"
    else:
        assert got == expected, f"{where}: {got!r} vs {expected!r}"


def trainable_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.named_parameters() if value.requires_grad}


def changed(before: dict[str, torch.Tensor], model: torch.nn.Module) -> bool:
    now = dict(model.named_parameters())
    return any(not torch.equal(value, now[name].detach()) for name, value in before.items() if name in now)


@pytest.fixture(params=KIT, ids=[family.id for family in KIT])
def family(request):
    return request.param


@pytest.fixture
def load(family, tiny_model_path):
    """load(path=None) -> a fresh task of ``family`` (its kit model, built once per session) on the CPU."""
    def get(path=None):
        path = path or tiny_model_path(family.task, None if family.default else family.name)
        return taskzoo.load(family.task, model=path, device="cpu", **family.load_options)
    return get


class TestContract:
    def test_one_input_gives_one_output_a_list_a_list_and_a_batch_what_one_at_a_time_does(self, family, load):
        zoo, options = load(), PREDICT_OPTIONS.get(family.task, {})
        items = [zoo.input_of(row) for row in toy_dataset(family.task, 3, seed=3)]
        one_at_a_time = [zoo.predict(item, **options) for item in items]
        listed = zoo.predict(items[:1], **options)
        assert isinstance(listed, list) and len(listed) == 1
        assert_close(listed[0], one_at_a_time[0])
        assert_close(zoo.predict(items, batch_size=3, **options), one_at_a_time)

    def test_predict_finetune_evaluate_finetune_save_and_reload(self, family, load, tmp_path):
        zoo, options, data = load(), PREDICT_OPTIONS.get(family.task, {}), toy_dataset(family.task, 8, seed=0)
        first = zoo.predict(zoo.input_of(data[0]), **options)
        for _ in range(2):  # after predict, then after evaluate
            before = trainable_copy(zoo.model)
            result = zoo.finetune(data, max_steps=2, **TRAIN)
            assert result.steps == 2 and changed(before, zoo.model)
            scores = zoo.evaluate(data, batch_size=4)
            assert math.isfinite(scores[zoo.primary_metric])
        again = zoo.predict(zoo.input_of(data[0]), **options)
        assert type(again) is type(first) and (not isinstance(first, dict) or set(again) == set(first))
        # Saved with weights unlike the built ones, it reloads to the same predictions.
        items = [zoo.input_of(row) for row in toy_dataset(family.task, 2, seed=4)]
        zoo.save(tmp_path / "saved")
        assert_close(load(tmp_path / "saved").predict(items, **options), zoo.predict(items, **options))

    def test_the_strategies_it_states_work_and_the_rest_are_refused_with_its_reason(self, family, load):
        zoo, data = load(), toy_dataset(family.task, 4, seed=0)
        assert set(family.strategies) | set(family.refused) == set(STRATEGIES)
        for strategy in family.strategies:  # LoRA last: its adapters are new parameters
            before = trainable_copy(zoo.model)
            result = zoo.finetune(data, strategy=strategy, max_steps=1, **TRAIN)
            adapters = [p for name, p in zoo.model.named_parameters() if "lora_B" in name]
            # LoRA's B matrices start at zero: one step moves them
            trained = any(p.abs().sum() > 0 for p in adapters) if strategy == "lora" else changed(before, zoo.model)
            assert result.steps == 1 and trained, strategy
        for strategy, reason in family.refused.items():
            with pytest.raises(ValueError) as refused:
                zoo.finetune(data, strategy=strategy, max_steps=1, **TRAIN)
            assert reason in str(refused.value)


DEFAULTS = [family for family in KIT if family.default]


@pytest.mark.parametrize("family", DEFAULTS, ids=[family.task for family in DEFAULTS])
def test_a_stream_evaluates_as_the_same_data_in_memory_and_fine_tunes(family, load, tmp_path):
    data = toy_dataset(family.task, 8, seed=1)
    zoo = load()
    in_memory = zoo.evaluate(data, batch_size=4)
    # Each example is scored once, in the same order: the metrics equal those of the in-memory data.
    assert zoo.evaluate(data.to_iterable_dataset(num_shards=2), batch_size=4) == pytest.approx(in_memory)
    result = zoo.finetune(toy_dataset(family.task, 8).to_iterable_dataset(num_shards=2),
                          eval=data.to_iterable_dataset(num_shards=2), max_steps=2, batch_size=4, progress=False,
                          plot=False, output_dir=str(tmp_path))
    assert result.steps == 2 and set(in_memory) <= set(result.final_metrics)
    assert (tmp_path / "last").is_dir()


# Options that keep each request quick and make it show more than the defaults (every box, all labels).
SERVE_PARAMETERS = {**PREDICT_OPTIONS, "object-detection": {"threshold": 0.0}, "text-classification": {"top_k": 2},
                    "image-classification": {"top_k": 3}, "translation": {"max_new_tokens": 8}}


def as_sent(zoo, value):
    """``value`` (a predict input) as a request sends it: media as base64 (PNG for images: lossless), pairs as lists."""
    import base64

    from taskzoo.data import is_image, load_image, png_base64

    if zoo.input_type == "audio":  # a file path: its bytes are sent
        with open(value, "rb") as file:
            return base64.b64encode(file.read()).decode()
    if is_image(value):
        return png_base64(load_image(value))
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("family", DEFAULTS, ids=[family.task for family in DEFAULTS])
def test_the_server_answers_what_predict_returns(family, load):
    """One request of two inputs and one of a single input (not in a list), in process; the answers are predict's
    outputs as JSON (images as base64 PNG)."""
    test_client = pytest.importorskip("fastapi.testclient", reason="the serve extra is not installed")
    from taskzoo.serving import create_app
    from taskzoo.serving.codec import to_json

    zoo, parameters = load(), SERVE_PARAMETERS.get(family.task, {})
    inputs = [zoo.input_of(row) for row in toy_dataset(family.task, 2, seed=5)]
    sent = [as_sent(zoo, value) for value in inputs]
    with test_client.TestClient(create_app(zoo)) as client:
        both = client.post("/predict", json={"inputs": sent, "parameters": parameters})
        one = client.post("/predict", json={"inputs": sent[0], "parameters": parameters})
    assert both.status_code == 200 and one.status_code == 200, both.text + one.text
    assert_close(both.json(), to_json(zoo.predict(inputs, **parameters)))
    assert_close(one.json(), to_json(zoo.predict(inputs[0], **parameters)))
