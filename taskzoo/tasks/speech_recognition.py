"""automatic-speech-recognition (aliases audio-transcription, asr): speech -> ``{"text"}``.

Two kinds of model, told apart by their config: encoder-decoders (AutoModelForSpeechSeq2Seq: Whisper,
Speech2Text, Moonshine, ...; text generated token by token, see ``taskzoo/speech_seq2seq.py``) and CTC
models of the wav2vec2 family (AutoModelForCTC, one character distribution per 20 ms frame). Audio is
decoded with soundfile and resampled with scipy (``taskzoo.audio.load_audio``). Inputs longer than the
model's window are split into overlapping windows and stitched (``taskzoo/audio_chunks.py``).
Fine-tuning a CTC model whose vocabulary does not cover the transcripts (a bare wav2vec2 encoder, say)
builds a character vocabulary from the training transcripts and a new output layer.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
import torch
from datasets import Audio, Dataset, Value

from taskzoo import audio_chunks, data as data_utils, metrics, speech_seq2seq, strategies, streaming
from taskzoo.audio import audio_length, check_transcribed_audio, load_audio
from taskzoo.ctc import ctc_tokenizer
from taskzoo.errors import DataError, ExportError
from taskzoo.task import Task

logger = logging.getLogger(__name__)
# CTC models and encoder-decoders other than Whisper have no fixed window: longer inputs are chunked to bound
# memory, and to stay within the clip lengths such models are trained on (Speech2Text, Moonshine: up to ~30 s).
WINDOW_S = 30.0
METADATA = ("metadata.csv", "metadata.jsonl")


class SpeechRecognition(Task):
    name = "automatic-speech-recognition"
    primary_metric = "wer"
    modality = "audio"
    model_needs = "a speech model with a feature extractor: CTC (wav2vec2, HuBERT, ...) or Whisper"
    input_type = "audio"
    greater_is_better = False
    required_columns = ("audio", "text")
    default_batch_size = 8
    default_learning_rate = 1e-4  # the usual rate for wav2vec2 CTC fine-tuning; Whisper's is nearer 1e-5
    # freeze_feature_encoder: keep a CTC model's convolutional front end fixed (the usual recipe when
    # fine-tuning a pretrained wav2vec2); encoder-decoders ignore it.
    finetune_options = {**Task.finetune_options, "freeze_feature_encoder": True}
    renamed_options = {"task": "whisper_task"}  # Whisper's task, one name for load and predict
    demo_config = dict(train_size=400, eval_size=32, epochs=6, learning_rate=1e-2, batch_size=8, scheduler="linear",
                       eval_every=100)  # 300 steps, 3 evaluations: tests/test_demo.py says what they reach

    def __init__(self, model, processor, *, language: str | None = None, whisper_task: str = "transcribe",
                 **kwargs):
        super().__init__(model, processor, **kwargs)
        self.is_ctc = not model.config.is_encoder_decoder
        self.is_whisper = not self.is_ctc and speech_seq2seq.is_whisper(getattr(processor, "tokenizer", None))
        if whisper_task != "transcribe" and not self.is_whisper:
            raise ValueError(f"whisper_task applies to Whisper models; this is a {model.config.model_type!r} model.")
        if language is not None and (self.is_ctc or not self.is_whisper and not speech_seq2seq.target_languages(
                processor.tokenizer)):
            raise ValueError(f"This {model.config.model_type!r} model takes no language; only Whisper and "
                             "multilingual Speech2Text models do.")
        # The language of the transcripts (``task`` is taken by taskzoo.load): Whisper's prompt (None: the model's
        # own, or detected) or a multilingual Speech2Text's target language.
        self.language, self.whisper_task = language, whisper_task
        # Encoder-decoders (Whisper, Speech2Text, Moonshine) tie their output layer to the token embeddings: there
        # is no separate head to train.
        self.supported_strategies = ("full", "freeze", "lora") if self.is_ctc else ("full", "lora")

    @classmethod
    def from_pretrained(cls, path, device=None, trust_remote_code=False, language=None, whisper_task="transcribe",
                        **model_kwargs):
        from transformers import (
            AutoConfig,
            AutoFeatureExtractor,
            AutoModelForCTC,
            AutoModelForSpeechSeq2Seq,
            AutoProcessor,
        )

        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        auto = AutoModelForSpeechSeq2Seq if config.is_encoder_decoder else AutoModelForCTC
        try:
            model, info = auto.from_pretrained(path, trust_remote_code=trust_remote_code, output_loading_info=True,
                                               **model_kwargs)
        except ValueError as error:
            raise ValueError(f"{path} holds a {config.model_type!r} model, which is neither a speech encoder-decoder "
                             f"nor a CTC model, so it cannot transcribe speech.") from error
        try:
            processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        except (OSError, ValueError, TypeError):  # a bare encoder ships no tokenizer: fine-tuning builds one
            processor = AutoFeatureExtractor.from_pretrained(path, trust_remote_code=trust_remote_code)
        tokenizer = getattr(processor, "tokenizer", None)
        if config.is_encoder_decoder and tokenizer is None:
            raise ValueError(f"{path} holds a {config.model_type!r} encoder-decoder but no tokenizer, which it "
                             "needs to read and write text: save its tokenizer (or processor) in that folder.")
        if config.is_encoder_decoder and speech_seq2seq.is_whisper(tokenizer):
            speech_seq2seq.complete_whisper_generation_config(model, tokenizer)
        new = [key for key in info["missing_keys"] if key.startswith("lm_head")]  # the CTC output layer
        return cls(model, processor, language=language, whisper_task=whisper_task, new_weights=new,
                   source=str(path), device=device)

    @classmethod
    def from_exported(cls, path, sessions, trust_remote_code=False, language=None, whisper_task="transcribe"):
        import types

        from transformers import AutoProcessor
        from transformers.models.auto.modeling_auto import MODEL_FOR_CTC_MAPPING

        from taskzoo.export import exported_model
        from taskzoo.export.seq2seq_runtime import encoder_decoder_model

        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        if "decoder" in sessions:  # Whisper: see taskzoo/export/seq2seq_runtime.py
            return cls(encoder_decoder_model(path, sessions, trust_remote_code), processor, language=language,
                       whisper_task=whisper_task, source=str(path), device="cpu")
        model = exported_model(path, sessions, trust_remote_code)
        # How many logit frames a clip of n samples has: the torch model's own formula, which reads its config only.
        model._get_feat_extract_output_lengths = types.MethodType(
            MODEL_FOR_CTC_MAPPING[type(model.config)]._get_feat_extract_output_lengths, model)
        return cls(model, processor, language=language, whisper_task=whisper_task, source=str(path), device="cpu")

    def export_graphs(self):
        """CTC models: one graph, waveform (and mask) -> per-frame logits, any number of samples; windows, stitching
        and decoding stay in Python. The convolutional front end stays fp32 in int8, and so does the output layer.
        Whisper: an encoder, its cross-attention keys and values, and a decoder with cached keys and values (see
        taskzoo/export/seq2seq_graphs.py)."""
        from taskzoo.export import Graph
        from taskzoo.export.seq2seq_graphs import encoder_decoder_graphs

        if not self.is_ctc:
            if self.model.config.model_type != "whisper":  # others' encoders take a mask, which these graphs omit
                raise ExportError(f"Exporting {self.model.config.model_type!r} speech encoder-decoders is not "
                                  "supported yet; CTC and Whisper models export.")
            noise = np.random.default_rng(0).normal(0, 0.1, 2 * self.sampling_rate).astype(np.float32)
            # Whisper's features span its whole window whatever the clip's length, and its encoder takes no mask.
            features = {"input_features": self._inputs([noise, noise[:self.sampling_rate]])["input_features"]}
            return encoder_decoder_graphs(strategies.exportable(self.model, merged=True), features,
                                          {"input_features": {0: "batch"}})
        model = strategies.exportable(self.model, merged=True)
        noise = np.random.default_rng(0).normal(0, 0.1, self.sampling_rate).astype(np.float32)
        inputs = self._inputs([noise, noise[: self.sampling_rate * 3 // 5]])
        axes = {0: "batch", 1: "samples"}
        return [Graph("model", model, inputs, ["logits"], dict.fromkeys(inputs, axes), keep_fp32=("lm_head",))]

    def save_export_files(self, path):
        from taskzoo.export.seq2seq_runtime import save_encoder_decoder_files

        if self.is_ctc:
            return super().save_export_files(path)
        save_encoder_decoder_files(strategies.exportable(self.model, merged=True), self.processor, path,
                                   {"task": self.name})

    @property
    def feature_extractor(self):
        return getattr(self.processor, "feature_extractor", self.processor)

    @property
    def tokenizer(self):
        tokenizer = getattr(self.processor, "tokenizer", None)
        if tokenizer is None:
            raise ValueError(f"The model in {self.source} has no tokenizer, so it cannot write text yet; "
                             "fine-tune it on transcribed audio first (that builds a character vocabulary).")
        return tokenizer

    @property
    def sampling_rate(self) -> int:
        return self.feature_extractor.sampling_rate

    # ----------------------------------------------------------------------------------------- data
    def read_path(self, path):
        """An audio folder (``metadata.csv`` or ``.jsonl`` with ``file_name`` and ``text``, or train/
        validation/test subfolders holding one), or a CSV/JSON/JSONL/Parquet table of paths and texts.
        Relative paths are resolved against the folder of the file that names them."""
        return data_utils.read_metadata_folder(path, "audio", example="file_name,text: 0001.wav,hello")

    def prepare(self, dataset, training: bool):
        feature = dataset.features["audio"]
        if isinstance(feature, Audio) and feature.decode:  # datasets' own decoder needs torchcodec
            dataset = dataset.cast_column("audio", Audio(decode=False))
        elif feature == Value("string"):
            missing = [p for p in dataset["audio"] if p is None or not Path(p).is_file()]
            if missing:
                raise DataError(f"Audio file {missing[0]} does not exist ({len(missing)} missing in column 'audio').")
        bad = [t for t in dataset["text"] if not isinstance(t, str)]
        if bad:
            raise DataError(f"Column 'text' must hold transcripts (strings); found {bad[0]!r} ({len(bad)} such rows).")
        return dataset

    def prepare_for_training(self, dataset) -> None:
        """CTC: a character vocabulary and a new output layer when the model's do not fit the transcripts."""
        if not self.is_ctc:
            return
        # A stream cannot be read to its end for this: its first rows stand for it (a character that first
        # appears later is read as the unknown token, as in evaluation data).
        texts = streaming.head(dataset, 1000)["text"] if streaming.is_stream(dataset) else dataset["text"]
        characters = set("".join(texts)) - {" "}
        tokenizer = getattr(self.processor, "tokenizer", None)
        unknown = characters - set(tokenizer.get_vocab()) if tokenizer is not None else characters
        if tokenizer is not None and not unknown and len(tokenizer) <= self.model.config.vocab_size:
            return  # the tokenizer fits (a freshly initialised head simply trains)
        if tokenizer is not None and unknown:
            logger.warning("The model's vocabulary lacks %s: building a character vocabulary from the "
                           "training transcripts and a new output layer.", sorted(unknown)[:20])
        self._new_ctc_vocabulary(sorted(characters))

    def _new_ctc_vocabulary(self, characters: list[str]) -> None:
        from transformers import Wav2Vec2Processor

        tokenizer = ctc_tokenizer(characters)
        model = strategies.exportable(self.model, merged=True)
        model.lm_head = torch.nn.Linear(model.lm_head.in_features, len(tokenizer)).to(self.device)
        model.config.vocab_size, model.config.pad_token_id = len(tokenizer), tokenizer.pad_token_id
        self.model, self.head_trained = model, True
        self.processor = Wav2Vec2Processor(feature_extractor=self.feature_extractor, tokenizer=tokenizer)

    def _audio(self, value, sampling_rate: int | None = None) -> np.ndarray:
        if isinstance(value, bytes):
            value = io.BytesIO(value)
        elif isinstance(value, (np.ndarray, torch.Tensor)):  # a bare array: at sampling_rate, or the model's
            value = (np.asarray(value), sampling_rate or self.sampling_rate)
        return load_audio(value, self.sampling_rate)

    def _inputs(self, audio: list[np.ndarray]) -> dict:
        """Model inputs for a batch of 16 kHz (the model's rate) waveforms."""
        if self.is_ctc:
            return dict(self.feature_extractor(audio, sampling_rate=self.sampling_rate, padding=True,
                                               return_tensors="pt"))
        return speech_seq2seq.model_inputs(self.feature_extractor, audio, self.is_whisper)

    def _labels(self, texts: list[str]) -> torch.Tensor:
        if not self.is_ctc:
            return speech_seq2seq.labels(self, texts)
        encoded = self.tokenizer(texts, padding=True, return_tensors="pt")
        return encoded.input_ids.masked_fill(encoded.attention_mask == 0, -100)

    def collate(self, examples: list[dict]) -> dict:
        texts = [row["text"] for row in examples]
        audio = [self._audio(row["audio"]) for row in examples]
        for row, waveform, text in zip(examples, audio, texts):  # predict, by contrast, accepts silence
            check_transcribed_audio(waveform, text, row["audio"])
        return {"inputs": self._inputs(audio), "labels": self._labels(texts), "text": texts,
                "lengths": torch.tensor([len(a) for a in audio])}

    # ------------------------------------------------------------------------------------- training
    def apply_strategy(self, strategy: str) -> None:
        if strategy == "freeze" and not self.is_ctc:
            raise ValueError(f"{self.name} supports strategy 'full' or 'lora' for {type(self.model).__name__} (the "
                             "output layer is tied to the token embeddings: no head to train alone); got 'freeze'.")
        super().apply_strategy(strategy)
        if self.is_ctc and self.training_options.get("freeze_feature_encoder"):
            base = self.model.get_base_model() if strategies.is_peft(self.model) else self.model
            if hasattr(base, "freeze_feature_encoder"):  # models reading filterbanks have no such encoder
                base.freeze_feature_encoder()

    def training_step(self, model, batch):
        decoder = {} if self.is_ctc else speech_seq2seq.decoder_inputs(model, batch["labels"])
        output = model(**batch["inputs"], **decoder, labels=batch["labels"])
        return {"loss": output.loss, "output": output.logits}

    def eval_step(self, model, batch):
        from accelerate.utils import extract_model_from_parallel

        model = extract_model_from_parallel(model)  # DistributedDataParallel hides generate()
        inputs = _on(model, batch["inputs"])
        if self.is_ctc:
            logits = model(**inputs).logits
            frames = self._valid_frames(model, inputs, batch["lengths"].tolist())
            texts = [self._decode_ctc(row[:n].argmax(-1))["text"] for row, n in zip(logits, frames)]
        else:
            tokens = speech_seq2seq.generate(self, model, inputs, speech_seq2seq.generate_options(self))
            texts = [text.strip() for text in self.tokenizer.batch_decode(tokens, skip_special_tokens=True)]
        return texts, list(batch["text"])

    def compute_metrics(self, predictions, references):
        """wer and cer on the texts as they are; wer_normalized and cer_normalized after lowercasing,
        removing punctuation and collapsing spaces on both sides."""
        normal = [metrics.normalize_transcript(t) for t in predictions]
        normal_refs = [metrics.normalize_transcript(t) for t in references]
        return {"wer": metrics.word_error_rate(predictions, references),
                "cer": metrics.character_error_rate(predictions, references),
                "wer_normalized": metrics.word_error_rate(normal, normal_refs),
                "cer_normalized": metrics.character_error_rate(normal, normal_refs)}

    # -------------------------------------------------------------------------------- family helpers
    @staticmethod
    def _valid_frames(model, inputs: dict, samples: list[int]) -> list[int]:
        """Logit frames of each clip's own audio: the frames after them in a padded batch are garbage,
        since the CTC loss never scores them. Counted from the attention mask where there is one
        (samples, or filterbank frames), else from the sample counts."""
        lengths = inputs["attention_mask"].sum(-1) if "attention_mask" in inputs else torch.tensor(samples)
        return model._get_feat_extract_output_lengths(lengths.cpu()).tolist()

    def _decode_ctc(self, ids: torch.Tensor, timestamps: bool = False) -> dict:
        tokenizer = self.tokenizer
        # Other special tokens ([UNK], <s>) count as blanks, so none reaches the text; the word
        # delimiter, special to the tokenizer, becomes the space between words.
        keep = (tokenizer.pad_token_id, getattr(tokenizer, "word_delimiter_token_id", None))
        special = [i for i in tokenizer.all_special_ids if i not in keep]
        ids = ids.masked_fill(torch.isin(ids, torch.tensor(special, device=ids.device)), tokenizer.pad_token_id)
        if not timestamps:
            return {"text": tokenizer.decode(ids.tolist())}
        decoded = tokenizer.decode(ids.tolist(), output_word_offsets=True)
        seconds = self.model.config.inputs_to_logits_ratio / self.sampling_rate
        return {"text": decoded.text, "chunks": [
            {"text": word["word"], "timestamp": (round(float(word["start_offset"] * seconds), 2),
                                                 round(float(word["end_offset"] * seconds), 2))}
            for word in decoded.word_offsets]}

    # -------------------------------------------------------------------------------------- predict
    def is_single(self, inputs) -> bool:
        if isinstance(inputs, tuple):  # (array, sampling_rate)
            return len(inputs) == 2 and isinstance(inputs[1], (int, np.integer))
        return not isinstance(inputs, list)

    def input_of(self, row):
        return row["audio"]

    def input_length(self, item) -> int:
        return audio_length(item)

    def predict(self, inputs, batch_size=None, progress=None, **options):
        """Transcribe audio: a path (wav, flac, ogg, ...), a ``{"array", "sampling_rate"}`` dict, an
        ``(array, sampling_rate)`` tuple, or an array at ``sampling_rate`` (default: the model's). Options:
        ``chunk_length_s`` / ``stride_length_s`` for long audio (``batch_size`` also batches their windows);
        ``return_timestamps`` (adds ``chunks``) for CTC and Whisper models; ``language`` for multilingual Whisper
        and Speech2Text models, ``whisper_task`` for Whisper; for encoder-decoders ``max_new_tokens`` and other
        ``generate`` options (``num_beams``, ...)."""
        window_batch = batch_size or self.default_batch_size
        return super().predict(inputs, batch_size=batch_size, progress=progress, window_batch=window_batch,
                               **options)

    def compile_target(self):
        return (self, "model") if self.is_ctc else None  # encoder-decoders generate token by token

    def preprocess_batch(self, inputs, sampling_rate=None):
        return [self._audio(item, sampling_rate) for item in inputs]  # decoded, at the model's rate

    def predict_batch(self, audio, window_batch=8, sampling_rate=None, return_timestamps=False,
                      chunk_length_s=None, stride_length_s=None, language=None, whisper_task=None,
                      **generate_options):
        given = {**generate_options, "language": language, "whisper_task": whisper_task}
        given = sorted(name for name, value in given.items() if value is not None)
        if self.is_ctc and given:
            raise ValueError(f"{given} apply to encoder-decoders only; this is a CTC model.")
        options = {} if self.is_ctc else speech_seq2seq.generate_options(
            self, language=language, return_timestamps=return_timestamps, task=whisper_task, **generate_options)
        limit = self.feature_extractor.chunk_length if self.is_whisper else None  # Whisper: its window at most
        if chunk_length_s is not None and not 0 < chunk_length_s <= (limit or chunk_length_s):
            raise ValueError(f"chunk_length_s must be positive{f' and at most the {limit} s window' if limit else ''}; "
                             f"got {chunk_length_s}.")
        align = self.model.config.inputs_to_logits_ratio if self.is_ctc else 1
        window, stride = audio_chunks.window_lengths(chunk_length_s or limit or WINDOW_S, stride_length_s,
                                                     self.sampling_rate, align)
        windows = [w for i, a in enumerate(audio) for w in audio_chunks.split(i, a, window, stride)]
        pieces = [[] for _ in audio]
        masks_padding = not self.is_ctc or getattr(self.feature_extractor, "return_attention_mask", True)
        for group in audio_chunks.batches(windows, window_batch, same_length=not masks_padding):
            inputs = _on(self.model, self._inputs([w.audio for w in group]))
            if self.is_ctc:
                logits = self.model(**inputs).logits
                frames = self._valid_frames(self.model, inputs, [len(w.audio) for w in group])
                for w, rows, n in zip(group, logits, frames):
                    pieces[w.item].append(audio_chunks.ctc_frames(rows, w, n, align))
                continue
            for w, tokens in zip(group, speech_seq2seq.generate(self, self.model, inputs, options)):
                chunked = len(audio[w.item]) > window
                pieces[w.item].append(audio_chunks.whisper_output(tokens, w, self.sampling_rate, chunked)
                                      if self.is_whisper else tokens)
        if self.is_ctc:
            return [self._decode_ctc(torch.cat(p).argmax(-1), bool(return_timestamps)) for p in pieces]
        if not self.is_whisper:
            return [{"text": speech_seq2seq.merge_windows(self.tokenizer, p)} for p in pieces]
        precision = self.feature_extractor.chunk_length / self.model.config.max_source_positions
        return [audio_chunks.stitch_whisper(self.tokenizer, p, bool(return_timestamps), precision) for p in pieces]

    # ---------------------------------------------------------------------------------- testing kit
    @staticmethod
    def tiny_model(path: str | os.PathLike, family: str = "wav2vec2") -> Path:
        """A tiny random model for the toy vocabulary at ``path``: wav2vec2 CTC ("wav2vec2", the default, or "ctc"),
        Whisper ("whisper"), Speech2Text ("speech2text", filterbanks in) or Moonshine ("moonshine", waveform in)."""
        from taskzoo.testing.speech_seq2seq import tiny_speech_model

        return tiny_speech_model(Path(path), family)

    @staticmethod
    def toy_dataset(n: int = 64, seed: int = 0) -> Dataset:
        """Utterances of one to three number words spoken by espeak-ng voices (recordings that ship in the
        package), as 16 kHz WAV files in a temporary folder; columns ``audio`` (path) and ``text``."""
        from taskzoo.testing import speech

        return speech.toy_speech(n, seed)


def _on(model, inputs: dict) -> dict:
    """Inputs on the model's device, floats in its dtype (a model loaded in half precision, say)."""
    parameter = next(model.parameters())
    return {key: value.to(parameter.device, parameter.dtype if value.is_floating_point() else None)
            for key, value in inputs.items()}
