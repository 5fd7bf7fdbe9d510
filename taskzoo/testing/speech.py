"""The speech part of the testing kit: tiny wav2vec2-CTC and Whisper models, and toy speech with known
transcripts: number words spoken by espeak-ng voices, recorded once (scripts/make_toy_speech.py) and shipped
as small FLAC files in taskzoo/testing/toy_speech, so that nothing outside pip is needed to use them."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset

from taskzoo.ctc import ctc_tokenizer

TOY_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TOY_MAX_WORDS = 3  # words per utterance
# Seconds of silence before the first word, between words (pauses the tiny model learns to mark as spaces) and
# after the last one; each word keeps 30 ms of its own silence on either side. Each word is resampled to 80 %
# to 100 % of its recorded length (faster, higher). Short clips train fast: the model's front end runs over
# every sample, so a training step costs in proportion to its clips' length.
TOY_LEAD = (0.02, 0.08)
TOY_GAP = (0.08, 0.2)
TOY_TAIL = (0.02, 0.08)
TOY_LENGTH = (80, 101)  # percent, drawn as numpy's integers(low, high)
TOY_VOICES = ("en-us", "en-us+f2", "en+m3", "en+f3", "en-gb-scotland", "en-us+m1")
TOY_SPEECH = Path(__file__).resolve().parent / "toy_speech"  # WORD-VOICE.flac, 16 kHz, trimmed
_TOY_CACHE: dict = {}  # per process: the temporary folder and the recorded words, read once


def tiny_ctc(path: Path) -> Path:
    """A tiny wav2vec2 CTC model whose convolutional front end starts as a filterbank: 32 mel-spaced
    band-pass filters, then two layers that smooth their rectified outputs into band envelopes at
    50 frames/s (the real model's rate). Everything else is random. From a random front end the tiny
    model spends hundreds of steps learning one; from this it learns the toy words in about 300.

    Its weights are drawn with std 0.1 rather than transformers' 0.02 (meant for hidden sizes of hundreds; at
    32 the signal through the random layers is faint): that halves the first phase of CTC training, in which
    the model emits nothing but the blank (WER 1.0) until it finds where the letters are."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC, Wav2Vec2Processor

    tokenizer = ctc_tokenizer(sorted(set("".join(TOY_WORDS))))
    bands, width = 32, 64  # 4 ms filters
    # "layer" normalisation makes the model honour the attention mask, so a padded batch predicts as
    # single inputs do.
    config = Wav2Vec2Config(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, conv_dim=(bands,) * 3, conv_kernel=(width, 8, 20),
        conv_stride=(8, 4, 10), feat_extract_activation="relu", feat_extract_norm="layer",
        do_stable_layer_norm=True, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        hidden_dropout=0.0, activation_dropout=0.0, attention_dropout=0.0, feat_proj_dropout=0.0,
        final_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0, ctc_loss_reduction="mean", ctc_zero_infinity=True,
        initializer_range=0.1)
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(config)
    mels = np.linspace(2595 * np.log10(1 + 100 / 700), 2595 * np.log10(1 + 7000 / 700), bands)
    times, window = (np.arange(width) - width / 2) / 16000, np.hanning(width)
    with torch.no_grad():
        first, *smoothers = model.wav2vec2.feature_extractor.conv_layers
        for band, mel in enumerate(mels):
            hertz = 700 * (10 ** (mel / 2595) - 1)
            first.conv.weight[band, 0] = torch.tensor(np.cos(2 * np.pi * hertz * times) * window / window.sum() * 2)
        for layer in smoothers:  # each band averaged over time, bands kept apart
            layer.conv.weight.zero_()
            for band in range(bands):
                layer.conv.weight[band, band] = 1 / layer.conv.kernel_size[0]
    model.save_pretrained(path)
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                         return_attention_mask=True)
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(path)
    return path


def tiny_whisper(path: Path) -> Path:
    """Whisper's real 30 s window and prompt, with a byte-level BPE tokenizer trained on the toy words."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator([" " + " ".join(TOY_WORDS)] * 4, trainers.BpeTrainer(
        vocab_size=300, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model = json.loads(bpe.to_str())["model"]
    vocab, merges = dict(model["vocab"]), [tuple(m.split(" ") if isinstance(m, str) else m) for m in model["merges"]]
    # WhisperTokenizer looks its special tokens up when built, and derives ids from their order:
    # <|en|> right after <|startoftranscript|>, timestamps right after <|notimestamps|>.
    special = ["<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>", "<|startoflm|>",
               "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
    tokenizer, ids = whisper_tokenizer(vocab, merges, special)
    end, start = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    config = WhisperConfig(vocab_size=len(tokenizer), num_mel_bins=80, d_model=32, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                           decoder_ffn_dim=64, max_source_positions=1500, max_target_positions=64,
                           pad_token_id=end, bos_token_id=end, eos_token_id=end, decoder_start_token_id=start,
                           suppress_tokens=[], begin_suppress_tokens=[end])
    torch.manual_seed(0)
    whisper = WhisperForConditionalGeneration(config)
    # A fresh GenerationConfig: one derived from the model config drops these Whisper keys on reload.
    whisper.generation_config = GenerationConfig(
        decoder_start_token_id=start, bos_token_id=end, eos_token_id=end, pad_token_id=end,
        no_timestamps_token_id=ids["<|notimestamps|>"], prev_sot_token_id=ids["<|startofprev|>"],
        lang_to_id={"<|en|>": ids["<|en|>"]}, is_multilingual=True, max_initial_timestamp_index=50,
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        begin_suppress_tokens=[end], suppress_tokens=[], max_new_tokens=40)
    whisper.save_pretrained(path)
    extractor = WhisperFeatureExtractor(feature_size=80, sampling_rate=16000, hop_length=160, chunk_length=30,
                                        n_fft=400)
    WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(path)
    return path


def widen_whisper(model, suppress_timestamps: bool = False) -> None:
    """Draw the tiny Whisper's matrices wide (std 1), in place: unlike the fresh kit model, which repeats one
    token, it then writes a different transcript for each clip, ending at different lengths, so outputs can be
    compared on many different token sequences (no trained Whisper exists offline, and training one takes
    minutes). ``suppress_timestamps`` keeps timestamp tokens out of its transcripts."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0, 1.0)
        # A longer end-token embedding (tied to the output layer): some clips end within a few tokens.
        model.model.decoder.embed_tokens.weight[model.generation_config.eos_token_id] *= 4
    if suppress_timestamps:
        config = model.generation_config
        config.suppress_tokens = list(range(config.no_timestamps_token_id + 1, model.config.vocab_size))


def whisper_tokenizer(vocab: dict, merges: list, special: list[str]):
    """A WhisperTokenizer (English, transcribe, no timestamps) over a byte-level BPE ``vocab``, with
    <|endoftext|>, ``special`` (<|startoftranscript|> first, <|notimestamps|> last) and the 1501 timestamps
    appended to it in that order; returns it and the ids of <|endoftext|> and ``special``."""
    from transformers import AddedToken, WhisperTokenizer

    timestamps = [f"<|{i * 0.02:.2f}|>" for i in range(1501)]
    for token in ["<|endoftext|>", *special, *timestamps]:
        vocab[token] = len(vocab)
    tokenizer = WhisperTokenizer(vocab=vocab, merges=merges, extra_special_tokens=special, pad_token="<|endoftext|>",
                                 language="en", task="transcribe", predict_timestamps=False)
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in special], special_tokens=True)
    # Timestamps are not special tokens: the stitcher finds them by id, decode() strips them.
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in timestamps])
    tokenizer.set_prefix_tokens(language="en", task="transcribe", predict_timestamps=False)
    return tokenizer, {token: tokenizer.convert_tokens_to_ids(token) for token in ["<|endoftext|>", *special]}


def toy_word_path(word: str, voice: str) -> Path:
    """The packaged recording of ``word`` in ``voice`` (written by scripts/make_toy_speech.py)."""
    return TOY_SPEECH / f"{word}-{voice}.flac"


def toy_words() -> tuple[Path, dict[str, list[np.ndarray]]]:
    """A temporary folder for the toy clips, and each toy word spoken once by each voice (16 kHz float32),
    read from the FLAC files that ship in the package: no speech synthesiser is needed."""
    import atexit
    import shutil

    import soundfile

    if "bank" not in _TOY_CACHE:
        bank: dict[str, list[np.ndarray]] = {}
        for word in TOY_WORDS:
            for voice in TOY_VOICES:
                path = toy_word_path(word, voice)
                if not path.is_file():
                    raise FileNotFoundError(f"The toy speech file {path} is missing from the taskzoo package "
                                            "(scripts/make_toy_speech.py writes it).")
                bank.setdefault(word, []).append(soundfile.read(path, dtype="float32")[0])
        folder = Path(tempfile.mkdtemp(prefix="taskzoo-toy-speech-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _TOY_CACHE.update(folder=folder, bank=bank)
    return _TOY_CACHE["folder"], _TOY_CACHE["bank"]


def toy_speech(n: int, seed: int) -> Dataset:
    """``n`` utterances of one to TOY_MAX_WORDS toy words, each word from a random voice at a random tempo
    and loudness, with silences between them, as 16 kHz WAV files; columns ``audio`` (path) and ``text``."""
    from scipy.signal import resample_poly

    folder, bank = toy_words()
    rng = np.random.default_rng(seed)
    (folder / f"seed-{seed}").mkdir(exist_ok=True)
    paths, texts = [], []
    for i in range(n):
        words = [TOY_WORDS[j] for j in rng.integers(0, len(TOY_WORDS), rng.integers(1, TOY_MAX_WORDS + 1))]
        pieces = [_silence(rng, TOY_LEAD)]
        for number, word in enumerate(words, 1):
            clip = bank[word][rng.integers(len(bank[word]))]
            clip = resample_poly(clip, int(rng.integers(*TOY_LENGTH)), 100)  # tempo and pitch together
            pieces += [clip * rng.uniform(0.4, 0.9), _silence(rng, TOY_TAIL if number == len(words) else TOY_GAP)]
        audio = np.concatenate(pieces) + rng.normal(0, 0.002, sum(map(len, pieces)))
        paths.append(str(folder / f"seed-{seed}" / f"{i:05d}.wav"))
        write_wav(paths[-1], audio, 16000)
        texts.append(" ".join(words))
    return Dataset.from_dict({"audio": paths, "text": texts})


def _silence(rng, seconds: tuple[float, float]) -> np.ndarray:
    return np.zeros(int(rng.uniform(*seconds) * 16000), np.float32)


def write_wav(path: str, audio: np.ndarray, sampling_rate: int) -> None:
    """16-bit mono WAV with the standard library: ~15x faster than soundfile.write for hundreds of short clips
    (the demo's speech data), with the same samples as libsndfile writes (floor of x * 32768)."""
    import wave

    samples = np.clip(np.floor(np.asarray(audio, np.float64) * 32768), -32768, 32767).astype("<i2")
    with wave.open(path, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sampling_rate)
        out.writeframes(samples.tobytes())
