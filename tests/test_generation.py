"""The length limit of the tasks that generate (translation, Whisper ASR): never generate's default of 20
tokens, and one warning per call when outputs stop at the limit instead of at their end token."""

import json
import shutil
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import taskzoo
from taskzoo.generation import DEFAULT_MAX_NEW_TOKENS, new_token_budget, stopped_at_limit
from taskzoo.tasks.speech_recognition import SpeechRecognition
from taskzoo.tasks.translation import Translation

ASR = "automatic-speech-recognition"
NOISE = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)  # 1 s


def without_length(source, target):
    """A copy of a model folder whose generation config sets no length (nor does its config.json)."""
    shutil.copytree(source, target)
    config = json.loads((target / "generation_config.json").read_text())
    for key in ("max_length", "max_new_tokens"):
        config.pop(key, None)
    (target / "generation_config.json").write_text(json.dumps(config))
    assert "max_length" not in json.loads((target / "config.json").read_text())
    return target


@pytest.fixture(scope="module")
def marian(tmp_path_factory):
    folder = tmp_path_factory.mktemp("generation")
    return without_length(Translation.tiny_model(folder / "saved"), folder / "no_length")


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    folder = tmp_path_factory.mktemp("generation")
    return without_length(SpeechRecognition.tiny_model(folder / "saved", family="whisper"), folder / "no_length")


def recording_generate(zoo) -> list:
    """Keep every tensor the model's generate() returns, to check the real number of generated ids."""
    outputs, real = [], zoo.model.generate
    zoo.model.generate = lambda *args, **kwargs: outputs.append(real(*args, **kwargs)) or outputs[-1]
    return outputs


def length_warnings(call) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [str(w.message) for w in caught if "length limit" in str(w.message)]


def test_translation_without_a_length_generates_up_to_the_decoders_positions(marian):
    zoo = taskzoo.load("translation", model=marian, device="cpu")
    outputs = recording_generate(zoo)
    # The untrained model never says </s>: it runs to the limit, 63 tokens after the start token.
    translated = []
    messages = length_warnings(lambda: translated.append(zoo.predict("the cat sees a dog")))
    assert outputs[0].shape[1] == zoo.model.config.max_position_embeddings == 64
    assert len(translated[0]["translation_text"].split()) > 20  # a word-level tokenizer: one word per token
    assert messages == ["translation: 1 output(s) stopped at the length limit (63 new tokens) rather than at their "
                        "end token during predict, so they may be cut short; pass a larger max_new_tokens."]


def test_whisper_without_a_length_generates_up_to_its_target_positions(whisper):
    zoo = taskzoo.load(ASR, model=whisper, device="cpu")
    outputs = recording_generate(zoo)
    assert length_warnings(lambda: zoo.predict(NOISE))
    # 64 target positions: the 4 prompt tokens (start, language, task, no-timestamps), which one pass per window
    # returns too, and 60 new ones.
    assert outputs[0].shape[1] == zoo.model.config.max_target_positions == 64
    assert new_token_budget(zoo.model, prompt_length=4) == 60


@pytest.mark.parametrize("family", ["translation", "whisper"])
def test_one_warning_per_call_when_outputs_hit_the_limit_and_none_otherwise(family, marian, whisper):
    if family == "translation":
        zoo = taskzoo.load("translation", model=marian, device="cpu")
        inputs = ["the cat sees a dog", "a red bird", "the old man eats"]
    else:
        zoo = taskzoo.load(ASR, model=whisper, device="cpu")
        inputs = [NOISE, NOISE[:8000], NOISE[:12000]]
    # Three batches, three cut outputs: still one warning, counting them all.
    assert [m.split(" rather")[0] for m in length_warnings(lambda: zoo.predict(inputs, batch_size=1,
                                                                                   max_new_tokens=3))] == [
        f"{zoo.name}: 3 output(s) stopped at the length limit (3 new tokens)"]
    with torch.no_grad():  # now every output ends at once with its end token
        if family == "translation":
            zoo.model.final_logits_bias[0, zoo.model.generation_config.eos_token_id] = 100.0
        else:  # Whisper has no output bias: a decoder whose last norm outputs a constant, aligned with </s>
            norm, end = zoo.model.model.decoder.layer_norm, zoo.model.generation_config.eos_token_id
            norm.weight.zero_()
            norm.bias.fill_(1.0)
            zoo.model.model.decoder.embed_tokens.weight[end] = 1.0
    outputs = recording_generate(zoo)
    assert length_warnings(lambda: zoo.predict(inputs, batch_size=2, max_new_tokens=3)) == []
    prompt = 4 if family == "whisper" else 0  # one pass per window returns Whisper's prompt too
    assert all(output.shape[1] <= 3 + prompt for output in outputs)


def test_evaluate_warns_once_too(tiny_model_path):
    zoo = taskzoo.load("translation", model=tiny_model_path("translation"), device="cpu")
    zoo.training_options = {**zoo.training_options, "max_new_tokens": 2}
    rows = [{"source": "the red cat sees a dog", "target": "le chat rouge voit un chien"}] * 5
    messages = length_warnings(lambda: zoo.evaluate(rows, batch_size=2))
    assert len(messages) == 1
    assert messages[0].startswith("translation: 5 output(s)") and "during evaluate" in messages[0]


def test_stopped_at_limit_reads_end_tokens_and_forced_ends():
    end, pad = 0, 2
    generated = torch.tensor([[5, 6, 7, 8],  # no end token: ran out of budget
                              [5, end, pad, pad],  # ended early
                              [5, 6, 7, end]])  # its end token is the last the budget allows
    assert stopped_at_limit(generated, 4, [end, pad], forced_end=False).tolist() == [True, False, False]
    # Where the end token is forced at the limit (Marian, BART), the third was cut there.
    assert stopped_at_limit(generated, 4, [end, pad], forced_end=True).tolist() == [True, False, True]
    assert stopped_at_limit(generated[:, :3], 4, [end, pad], forced_end=False).tolist() == [False, False, False]


def test_budget_prefers_the_caller_then_the_checkpoint(marian):
    zoo = taskzoo.load("translation", model=marian, device="cpu")
    model = zoo.model
    assert new_token_budget(model, 7) == 7
    assert new_token_budget(model) == 63  # positions 64, less the decoder start token
    model.generation_config.max_length = 24
    assert new_token_budget(model) == 23
    model.generation_config.max_new_tokens = 10
    assert new_token_budget(model) == 10

    from transformers import GenerationConfig, T5Config

    # T5 numbers positions relatively: no position table, so the default applies.
    t5 = SimpleNamespace(generation_config=GenerationConfig(), config=T5Config())
    assert new_token_budget(t5) == DEFAULT_MAX_NEW_TOKENS
