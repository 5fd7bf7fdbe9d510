"""ONNX export of encoder-decoders (translation, Whisper): the fp32 export generates exactly the torch model's text,
greedy and with beams, on batches whose rows end at different steps; int8 mostly agrees; evaluate, JSON lines and
serving work on it; fine-tuning it is refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the export extra (onnx, onnxruntime, onnxscript) is not installed")

import taskzoo
from taskzoo.audio import load_audio
from taskzoo.errors import ExportError
from taskzoo.tasks.speech_recognition import SpeechRecognition
from taskzoo.testing import toy_dataset
from taskzoo.testing.speech import widen_whisper

ASR = "automatic-speech-recognition"
# Sources of 2 to 12 words: their translations end at different steps of one batch.
SOURCES = ["the dog sees the cat", "a bird eats the green tree and the red cat sees a happy child",
           "the man likes a car", "a happy child finds the blue house", "the cat", "a green bird eats"]


@pytest.fixture(scope="session")
def translator(trained_translator):
    """The tiny Marian fine-tuned on toy data (conftest.py), so that its translations differ from row to row."""
    return trained_translator[0]


@pytest.fixture(scope="session")
def whisper(tmp_path_factory):
    """The tiny Whisper with its matrices drawn wide (std 1) and timestamps suppressed, as in
    test_speech_recognition.py: its transcripts differ clip by clip and end at different steps (the kit has no
    trained Whisper, and training one takes minutes)."""
    zoo = taskzoo.load(ASR, model=SpeechRecognition.tiny_model(tmp_path_factory.mktemp("whisper"), family="whisper"),
                       device="cpu")
    widen_whisper(zoo.model, suppress_timestamps=True)
    return zoo


@pytest.fixture(scope="session")
def clips():
    return list(toy_dataset(ASR, 6, seed=1)["audio"])


@pytest.fixture(scope="session")
def exports(translator, whisper, tmp_path_factory):
    """exports(task, quantize=None) -> (torch task, ONNX task, folder), each exported once per session."""
    built, zoos = {}, {"translation": translator, ASR: whisper}

    def get(task: str, quantize: str | None = None):
        if (task, quantize) not in built:
            folder = zoos[task].export(tmp_path_factory.mktemp(f"{task}_{quantize}"), quantize=quantize)
            built[task, quantize] = zoos[task], taskzoo.load(task, model=folder), folder
        return built[task, quantize]
    return get


def texts(outputs: list[dict]) -> list[str]:
    return [output.get("translation_text", output.get("text")) for output in outputs]


@pytest.mark.parametrize("options", [{}, {"num_beams": 3}, {"num_beams": 2, "length_penalty": 2.0},
                                     {"max_new_tokens": 4}])
def test_translation_export_translates_exactly_as_torch(exports, options):
    torch_zoo, onnx_zoo, _ = exports("translation")
    theirs = torch_zoo.predict(SOURCES, batch_size=4, **options)
    assert onnx_zoo.predict(SOURCES, batch_size=4, **options) == theirs
    assert len(set(texts(theirs))) >= 4  # not degenerate
    if "max_new_tokens" not in options:
        assert len({len(text.split()) for text in texts(theirs)}) >= 2  # rows that end at different steps
    assert onnx_zoo.predict(SOURCES[1], **options) == theirs[1]


@pytest.mark.parametrize("options", [{}, {"num_beams": 3}, {"language": "en", "task": "transcribe"}])
def test_whisper_export_transcribes_exactly_as_torch(exports, clips, options):
    torch_zoo, onnx_zoo, _ = exports(ASR)
    theirs = torch_zoo.predict(clips, batch_size=4, max_new_tokens=12, **options)
    assert onnx_zoo.predict(clips, batch_size=4, max_new_tokens=12, **options) == theirs
    lengths = {len(torch_zoo.tokenizer(t, add_special_tokens=False).input_ids) for t in texts(theirs)}
    assert len(set(texts(theirs))) >= 4 and len(lengths) >= 2  # rows that end at different steps


def test_whisper_export_chunks_long_audio_and_gives_timestamps_as_torch(exports, clips):

    torch_zoo, onnx_zoo, _ = exports(ASR)
    long = np.concatenate([load_audio(clip, 16000) for clip in clips] * 4)  # about 35 s
    options = dict(chunk_length_s=10, max_new_tokens=8, return_timestamps=True)
    theirs = torch_zoo.predict(long, **options)
    assert onnx_zoo.predict(long, **options) == theirs and theirs["chunks"] and theirs["text"]


def test_export_folder_holds_encoder_cross_attention_and_decoder_graphs(exports):
    for task in ("translation", ASR):
        _, onnx_zoo, folder = exports(task)
        info = json.loads((folder / "taskzoo.json").read_text())
        assert info["format"] == "onnx" and info["task"] == task and set(info["graphs"]) == {
            "encoder", "cross_attention", "decoder"}
        decoder = info["graphs"]["decoder"]
        assert "past.0.key" in decoder["inputs"] and "cross.0.value" in decoder["inputs"]
        assert decoder["outputs"][0] == "logits" and "present.0.key" in decoder["outputs"]
        assert onnx_zoo.exported == info
    assert json.loads((exports("translation")[2] / "taskzoo.json").read_text())["src_lang"] is None


@pytest.mark.slow  # a third export of the session (~19 s)
def test_int8_translation_export_mostly_agrees_with_torch(exports):
    torch_zoo, onnx_zoo, folder = exports("translation", "int8")
    sources = [row["source"] for row in toy_dataset("translation", 48, seed=7)]
    theirs, ours = texts(torch_zoo.predict(sources)), texts(onnx_zoo.predict(sources))
    agreement = sum(a == b for a, b in zip(ours, theirs)) / len(sources)
    assert agreement >= 0.85, agreement
    info = json.loads((folder / "taskzoo.json").read_text())
    assert all(graph["quantized"]["int8_nodes"] > 0 for graph in info["graphs"].values())


@pytest.mark.slow
def test_int8_whisper_export_transcribes_and_mostly_picks_torchs_next_token(exports, clips):
    torch_zoo, onnx_zoo, folder = exports(ASR, "int8")
    info = json.loads((folder / "taskzoo.json").read_text())
    assert info["quantize"] == "int8" and info["graphs"]["decoder"]["quantized"]["int8_nodes"] > 0
    assert all(set(output) == {"text"} for output in onnx_zoo.predict(clips, max_new_tokens=8))
    # Next-token choices given the same prefixes (free-running transcripts part at their first difference, and
    # these wide random weights magnify int8's error: 62% of choices agree here, against 0.3% by chance).
    features = torch_zoo._inputs([torch_zoo._audio(clip) for clip in clips])["input_features"]
    prefixes = torch.randint(0, 290, (len(clips), 12), generator=torch.Generator().manual_seed(0))
    prefixes[:, 0] = torch_zoo.model.generation_config.decoder_start_token_id
    with torch.no_grad():
        theirs = torch_zoo.model(input_features=features, decoder_input_ids=prefixes).logits.argmax(-1)
    ours = onnx_zoo.model(input_features=features, decoder_input_ids=prefixes).logits.argmax(-1)
    assert (ours == theirs).float().mean() >= 0.5


def test_translation_export_evaluates_as_torch(exports):
    torch_zoo, onnx_zoo, _ = exports("translation")
    held_out = toy_dataset("translation", 16, seed=1)
    scores = onnx_zoo.evaluate(held_out, batch_size=8)
    assert scores == torch_zoo.evaluate(held_out, batch_size=8) and scores["bleu"] > 0


def test_whisper_export_evaluates_as_torch(exports):
    torch_zoo, onnx_zoo, _ = exports(ASR)
    held_out = toy_dataset(ASR, 6, seed=2)
    assert onnx_zoo.evaluate(held_out, batch_size=3) == torch_zoo.evaluate(held_out, batch_size=3)


@pytest.mark.parametrize("task", ["translation", ASR])
def test_seq2seq_export_refuses_fine_tuning_in_one_line(exports, task):
    _, onnx_zoo, _ = exports(task)
    with pytest.raises(ExportError, match=r"^\S+ is an ONNX export for inference; fine-tune the torch model it came "
                                          r"from\.$"):
        onnx_zoo.finetune(toy_dataset(task, 4))


def test_saving_a_translation_export_copies_its_folder(exports, tmp_path):
    _, onnx_zoo, folder = exports("translation")
    copy = onnx_zoo.save(tmp_path / "copy")
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in folder.iterdir())
    assert taskzoo.load("translation", model=copy).predict(SOURCES[:2]) == onnx_zoo.predict(SOURCES[:2])


def test_seq2seq_export_writes_json_lines_and_serves(exports, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from taskzoo.serving import create_app

    torch_zoo, onnx_zoo, _ = exports("translation")
    rows = toy_dataset("translation", 5, seed=3)
    output = onnx_zoo.predict_to_jsonl(rows, tmp_path / "out.jsonl", batch_size=2)
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line["output"] for line in lines] == torch_zoo.predict(list(rows["source"]))
    with TestClient(create_app(onnx_zoo)) as client:
        answer = client.post("/predict", json={"inputs": SOURCES[:2], "parameters": {"num_beams": 2}})
        assert answer.status_code == 200, answer.text
        assert answer.json() == torch_zoo.predict(SOURCES[:2], num_beams=2)


def _random_family(family: str, folder, tokenizer_folder):
    """A T5 or BART translator of the kit's vocabulary, its weights drawn wide so that rows differ."""
    from transformers import (
        AutoTokenizer,
        BartConfig,
        BartForConditionalGeneration,
        GenerationConfig,
        T5Config,
        T5ForConditionalGeneration,
    )

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    pad, end, size = tokenizer.pad_token_id, tokenizer.eos_token_id, len(tokenizer)
    torch.manual_seed(0)
    if family == "t5":
        model = T5ForConditionalGeneration(T5Config(
            vocab_size=size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, pad_token_id=pad,
            eos_token_id=end, decoder_start_token_id=pad))
    else:
        model = BartForConditionalGeneration(BartConfig(
            vocab_size=size, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
            pad_token_id=pad, eos_token_id=end, bos_token_id=end, decoder_start_token_id=end))
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0, 0.5)
    model.generation_config = GenerationConfig(decoder_start_token_id=model.config.decoder_start_token_id,
                                               eos_token_id=end, pad_token_id=pad, forced_eos_token_id=end,
                                               max_length=12)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("family", ["t5", "bart"])
def test_t5_and_bart_exports_translate_exactly_as_torch(family, tiny_model_path, tmp_path):
    folder = _random_family(family, tmp_path / family, tiny_model_path("translation"))
    torch_zoo = taskzoo.load("translation", model=folder, device="cpu")
    onnx_zoo = taskzoo.load("translation", model=torch_zoo.export(tmp_path / f"{family}-onnx"))
    for options in ({}, {"num_beams": 3}):
        theirs = torch_zoo.predict(SOURCES, **options)
        assert onnx_zoo.predict(SOURCES, **options) == theirs and len(set(texts(theirs))) >= 3
