"""Speech recognition with encoder-decoders beyond Whisper (Speech2Text: filterbanks in; Moonshine: the waveform
in), and Whisper checkpoints whose generation config was written from the model config."""

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile
import torch

import taskzoo
from taskzoo import metrics, speech_seq2seq
from taskzoo.tasks.speech_recognition import SpeechRecognition
from taskzoo.testing import toy_dataset

TASK = "automatic-speech-recognition"
FAMILIES = ["speech2text", "moonshine"]
WHISPER_KEYS = ("no_timestamps_token_id", "prev_sot_token_id", "lang_to_id", "task_to_id", "is_multilingual",
                "max_initial_timestamp_index")


@pytest.fixture(scope="module")
def held_out():
    return toy_dataset(TASK, 48, seed=1)


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """kit(family) -> the folder of that family's tiny model, built once."""
    built = {}

    def get(family: str):
        if family not in built:
            built[family] = SpeechRecognition.tiny_model(tmp_path_factory.mktemp(family), family=family)
        return built[family]

    return get


# Steps and rates measured on the toy speech: after them the tiny models' WER on held-out clips is well below 1.
SETTINGS = {"speech2text": dict(max_steps=150, learning_rate=3e-3, batch_size=8),
            "moonshine": dict(max_steps=150, learning_rate=3e-3, batch_size=8)}


@pytest.fixture(scope="module")
def trained(kit, held_out):
    """trained(family) -> (zoo, metrics before, finetune result): fine-tuned once per family."""
    runs = {}

    def get(family: str):
        if family not in runs:
            zoo = taskzoo.load(TASK, model=kit(family), device="cpu")
            before = zoo.evaluate(held_out)
            result = zoo.finetune(toy_dataset(TASK, 400, seed=0), eval=held_out, scheduler="constant", log_every=5,
                                  progress=False, save_checkpoints=False, **SETTINGS[family])
            runs[family] = zoo, before, result
        return runs[family]

    return get


@pytest.mark.parametrize("family", FAMILIES)
def test_fine_tuning_learns_the_toy_words(family, trained, held_out):
    zoo, before, result = trained(family)
    losses = [row["loss"] for row in result.history if "loss" in row]
    assert losses[-1] < losses[0] / 2
    after = zoo.evaluate(held_out)
    assert set(after) == {"wer", "cer", "wer_normalized", "cer_normalized"}
    assert before["wer"] >= 0.95 and after["wer"] <= 0.6 and after["cer"] < before["cer"] / 2


@pytest.mark.parametrize("family", FAMILIES)
def test_predict_single_and_batched(family, trained, held_out):
    zoo = trained(family)[0]
    paths = list(held_out.select(range(6))["audio"])
    batched = zoo.predict(paths, batch_size=4)
    assert isinstance(batched, list) and len(batched) == 6
    assert all(set(output) == {"text"} and isinstance(output["text"], str) for output in batched)
    assert batched == [zoo.predict(path) for path in paths]  # padding in a batch changes nothing
    assert "<" not in "".join(output["text"] for output in batched)  # no special tokens in the text


@pytest.mark.parametrize("family", FAMILIES)
def test_save_opens_with_transformers_loaders(family, trained, held_out, tmp_path):
    from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

    zoo = trained(family)[0]
    zoo.save(tmp_path / "saved")
    paths = list(held_out.select(range(3))["audio"])
    assert taskzoo.load(TASK, model=tmp_path / "saved", device="cpu").predict(paths) == zoo.predict(paths)
    model = AutoModelForSpeechSeq2Seq.from_pretrained(tmp_path / "saved")
    processor = AutoProcessor.from_pretrained(tmp_path / "saved")
    audio = soundfile.read(paths[0], dtype="float32")[0]
    features = processor.feature_extractor(audio, sampling_rate=16000, return_tensors="pt")
    tokens = model.generate(**features, max_new_tokens=20)
    assert processor.tokenizer.decode(tokens[0], skip_special_tokens=True).strip() == zoo.predict(paths[0])["text"]


@pytest.mark.parametrize("family", FAMILIES)
def test_whisper_only_options_are_refused_in_one_line(family, kit):
    zoo = taskzoo.load(TASK, model=kit(family), device="cpu")
    clip = np.zeros(16000, np.float32)
    for options, message in [({"return_timestamps": True}, "return_timestamps applies to Whisper and CTC models"),
                             ({"task": "translate"}, "task applies to Whisper models"),
                             ({"language": "fr"}, "takes no language 'fr'")]:
        with pytest.raises(ValueError, match=message) as error:
            zoo.predict(clip, **options)
        assert "\n" not in str(error.value) and repr(zoo.model.config.model_type) in str(error.value)
    with pytest.raises(ValueError, match="takes no language"):
        taskzoo.load(TASK, model=kit(family), device="cpu", language="en")
    with pytest.raises(ValueError, match="whisper_task applies to Whisper"):
        taskzoo.load(TASK, model=kit(family), device="cpu", whisper_task="translate")


def test_long_audio_is_cut_into_windows_and_joined(trained, held_out):
    zoo = trained("speech2text")[0]
    pieces, words = [], []
    for row in held_out:
        pieces += [soundfile.read(row["audio"], dtype="float32")[0], np.zeros(3200, np.float32)]
        words.append(row["text"])
        if sum(map(len, pieces)) > 70 * 16000:
            break
    audio, transcript = np.concatenate(pieces), " ".join(words)
    calls = []
    generate = zoo.model.generate
    zoo.model.generate = lambda **inputs: calls.append(len(inputs["input_features"])) or generate(**inputs)
    try:
        text = zoo.predict(audio, batch_size=4, max_new_tokens=60)["text"]
    finally:
        del zoo.model.generate
    assert calls == [len(audio) // (20 * 16000) + 1]  # 30 s windows every 20 s, in one batch
    whole = " ".join(zoo.predict([row["audio"] for row in held_out.select(range(len(words)))], batch_size=8)
                     [i]["text"] for i in range(len(words)))
    # Joined where the windows overlap: about as good as transcribing each clip alone.
    assert metrics.word_error_rate([text], [transcript]) <= metrics.word_error_rate([whole], [transcript]) + 0.15


def test_merge_windows_keeps_the_overlap_once(kit):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(kit("moonshine"))
    ids = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    rows = [torch.tensor([1, *ids("one two three four"), 2]), torch.tensor([1, *ids("three four five six"), 2]),
            torch.tensor([1, *ids("five six seven eight"), 2])]
    assert speech_seq2seq.merge_windows(tokenizer, rows) == "one two three four five six seven eight"
    # No overlap of two or more equal tokens: the windows are simply joined.
    assert speech_seq2seq.merge_windows(tokenizer, rows[::2]) == "one two three four five six seven eight"
    assert speech_seq2seq.merge_windows(tokenizer, [rows[0], rows[0][:3]]) == "one two three four one two"


def test_multilingual_speech2text_takes_its_target_language(tmp_path, held_out):
    from taskzoo.testing.speech_seq2seq import tiny_speech2text

    path = tiny_speech2text(tmp_path / "s2t", multilingual=True)
    zoo = taskzoo.load(TASK, model=path, device="cpu", language="fr")
    french = zoo.tokenizer.lang_code_to_id["fr"]
    labels = zoo.collate([held_out[0]])["labels"][0]
    assert labels[0] == french and labels[-1] == zoo.tokenizer.eos_token_id  # the language first, as fairseq's
    seen = []
    generate = zoo.model.generate
    zoo.model.generate = lambda **options: seen.append(options.get("forced_bos_token_id")) or generate(**options)
    zoo.predict(held_out[0]["audio"], max_new_tokens=3)
    zoo.predict(held_out[0]["audio"], max_new_tokens=3, language="de")
    assert seen == [french, zoo.tokenizer.lang_code_to_id["de"]]
    with pytest.raises(ValueError, match="no language 'xx': it knows de, es, fr"):
        zoo.predict(held_out[0]["audio"], language="xx")


# ------------------------------------------------------------------------------------------------------ Whisper
@pytest.fixture(scope="module")
def whisper_from_model_config(tmp_path_factory):
    """The kit's tiny Whisper with its generation config marked as written from the model config
    (``_from_model_config: true``, as fine-tuning scripts often leave it): transformers drops Whisper's keys on load."""
    from transformers import AutoModelForSpeechSeq2Seq

    original = SpeechRecognition.tiny_model(tmp_path_factory.mktemp("whisper"), family="whisper")
    path = tmp_path_factory.mktemp("whisper_from_model_config") / "model"
    shutil.copytree(original, path)
    written = json.loads((path / "generation_config.json").read_text())
    assert set(WHISPER_KEYS) <= set(written)
    (path / "generation_config.json").write_text(json.dumps({**written, "_from_model_config": True}))
    loaded = AutoModelForSpeechSeq2Seq.from_pretrained(path).generation_config
    assert not any(hasattr(loaded, key) for key in WHISPER_KEYS)
    return original, path


def test_whisper_generation_config_is_completed_from_the_tokenizer(whisper_from_model_config, held_out, tmp_path):
    from transformers import AutoModelForSpeechSeq2Seq

    original, path = whisper_from_model_config
    reference = taskzoo.load(TASK, model=original, device="cpu")
    zoo = taskzoo.load(TASK, model=path, device="cpu")
    for key in WHISPER_KEYS:
        assert getattr(zoo.model.generation_config, key) == getattr(reference.model.generation_config, key), key
    clips = list(held_out.select(range(3))["audio"])
    for options in ({}, {"language": "en", "task": "transcribe"}, {"return_timestamps": True}):
        assert zoo.predict(clips, max_new_tokens=6, **options) == reference.predict(clips, max_new_tokens=6, **options)
    zoo.save(tmp_path / "saved")  # the completed config is written out
    saved = AutoModelForSpeechSeq2Seq.from_pretrained(tmp_path / "saved").generation_config
    assert saved.lang_to_id == reference.model.generation_config.lang_to_id and saved.no_timestamps_token_id


def test_openai_english_only_vocabularies_are_not_multilingual(whisper_from_model_config):
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(whisper_from_model_config[1])
    for vocab_size, multilingual in ((51864, False), (51865, True), (len(tokenizer), True)):
        model = SimpleNamespace(generation_config=GenerationConfig(), config=SimpleNamespace(vocab_size=vocab_size))
        assert "lang_to_id" in speech_seq2seq.complete_whisper_generation_config(model, tokenizer)
        assert model.generation_config.is_multilingual == multilingual
    kept = SimpleNamespace(generation_config=GenerationConfig(no_timestamps_token_id=7, is_multilingual=False),
                           config=SimpleNamespace(vocab_size=len(tokenizer)))
    filled = speech_seq2seq.complete_whisper_generation_config(kept, tokenizer)
    assert "no_timestamps_token_id" not in filled and kept.generation_config.no_timestamps_token_id == 7
    assert not kept.generation_config.is_multilingual  # what the checkpoint says is kept
