"""The speech testing kit's tiny encoder-decoders other than Whisper: Speech2Text (log-mel filterbanks in,
a sentencepiece tokenizer) and Moonshine (raw waveforms in, a fast BPE tokenizer), each with a tokenizer
trained on the toy words and config sizes like transformers' own model tests."""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from taskzoo.testing.speech import TOY_WORDS

TINY = dict(encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
            encoder_ffn_dim=64, decoder_ffn_dim=64, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)


def _toy_sentences() -> list[str]:
    """Text to train the tokenizers on: every toy word, alone and beside each other."""
    return [" ".join(TOY_WORDS)] + [f"{a} {b}" for a in TOY_WORDS for b in TOY_WORDS]


def tiny_speech2text(path: Path, multilingual: bool = False) -> Path:
    """Speech2Text (fairseq S2T, ``facebook/s2t-small-librispeech-asr``'s layout): 80 log-mel filterbank
    channels at 100 frames/s, two strided convolutions (to 25 frames/s), then a transformer; its
    Speech2TextTokenizer holds a sentencepiece unigram model trained on the toy words. ``multilingual``: also
    the MuST-C target-language tokens (<lang:fr>, ...), as ``facebook/s2t-medium-mustc-multilingual-st`` has."""
    import sentencepiece
    from transformers import (
        Speech2TextConfig,
        Speech2TextFeatureExtractor,
        Speech2TextForConditionalGeneration,
        Speech2TextProcessor,
        Speech2TextTokenizer,
    )
    from transformers.models.speech_to_text.tokenization_speech_to_text import MUSTC_LANGS

    path.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    # fairseq's order: <s>, <pad>, </s>, <unk>, then the pieces; the tokenizer reads language ids from the
    # sentencepiece model and the rest from vocab.json, so both number the tokens alike.
    languages = [f"<lang:{code}>" for code in MUSTC_LANGS] if multilingual else []
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_toy_sentences() * 4), model_writer=model, vocab_size=64, hard_vocab_limit=False,
        model_type="unigram", character_coverage=1.0, bos_id=0, pad_id=1, eos_id=2, unk_id=3,
        user_defined_symbols=languages, minloglevel=2)
    (path / "sentencepiece.bpe.model").write_bytes(model.getvalue())
    pieces = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = {pieces.id_to_piece(i): i for i in range(pieces.get_piece_size())}
    (path / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = Speech2TextTokenizer(str(path / "vocab.json"), str(path / "sentencepiece.bpe.model"),
                                     **({"lang_codes": "mustc", "tgt_lang": "fr"} if multilingual else {}))
    config = Speech2TextConfig(
        vocab_size=len(vocab), d_model=32, **TINY, conv_channels=32, conv_kernel_sizes=(5, 5), num_conv_layers=2,
        input_feat_per_channel=80, input_channels=1, max_source_positions=1500, max_target_positions=64,
        pad_token_id=vocab["<pad>"], bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"],
        decoder_start_token_id=vocab["</s>"], scale_embedding=True)
    torch.manual_seed(0)
    s2t = Speech2TextForConditionalGeneration(config)
    s2t.generation_config.max_new_tokens = 40
    s2t.save_pretrained(path)
    extractor = Speech2TextFeatureExtractor(feature_size=80, num_mel_bins=80, sampling_rate=16000)
    Speech2TextProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(path)
    return path


def tiny_moonshine(path: Path) -> Path:
    """Moonshine (``UsefulSensors/moonshine-tiny``'s layout): the 16 kHz waveform itself through three
    strided convolutions (to about 42 frames/s), rotary-position transformers; a fast byte-fallback BPE
    tokenizer over the toy words with <unk>, <s> (also the decoder start) and </s> first, as moonshine's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import (
        MoonshineConfig,
        MoonshineForConditionalGeneration,
        PreTrainedTokenizerFast,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2Processor,
    )

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    bpe.decoder = decoders.Metaspace()
    bpe.train_from_iterator(_toy_sentences(), trainers.BpeTrainer(
        vocab_size=60, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    config = MoonshineConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, encoder_num_hidden_layers=2,
        decoder_num_hidden_layers=2, encoder_num_attention_heads=4, decoder_num_attention_heads=4,
        max_position_embeddings=64, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1, pad_token_id=2)
    torch.manual_seed(0)
    moonshine = MoonshineForConditionalGeneration(config)
    band_envelopes(moonshine.model.encoder)
    moonshine.generation_config.max_new_tokens = 40
    moonshine.save_pretrained(path)
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=False,
                                         return_attention_mask=True)
    Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(path)
    return path


def band_envelopes(encoder) -> None:
    """Start Moonshine's convolutional front end as a filterbank, as the kit's wav2vec2 starts (from random
    weights the tiny model learns little of the toy words in a thousand steps). Its first layer becomes pairs of
    band-pass filters in quadrature (cosine and sine, 8 ms Hann windows at mel-spaced frequencies), sampled every
    4 ms; the second splits each output into its positive and negative parts (through the GELU after it); the
    third adds the four parts of a band over three steps: |cos| + |sin|, the band's envelope at ~42 frames/s.
    The other half of the third layer's outputs starts at zero; everything stays trainable."""
    import numpy as np

    hidden, width = encoder.conv1.out_channels, encoder.conv1.kernel_size[0]
    bands = hidden // 2
    mels = np.linspace(2595 * np.log10(1 + 100 / 700), 2595 * np.log10(1 + 7000 / 700), bands)
    times, window = (np.arange(width) - width // 2) / 16000, np.hanning(width)
    with torch.no_grad():
        for conv in (encoder.conv2, encoder.conv3):
            conv.weight.zero_()
            conv.bias.zero_()
        for band, mel in enumerate(mels):
            phase = 2 * np.pi * 700 * (10 ** (mel / 2595) - 1) * times
            for part, wave in enumerate((np.cos(phase), np.sin(phase))):
                channel = 2 * band + part
                encoder.conv1.weight[channel, 0] = torch.tensor(wave * window / window.sum() * 2)
                for sign in (1, -1):  # conv2: +x and -x of this channel, at the centre of its 7 steps
                    split = 2 * channel + (sign < 0)
                    encoder.conv2.weight[split, channel, encoder.conv2.kernel_size[0] // 2] = sign
                    encoder.conv3.weight[band, split, :] = 1 / encoder.conv3.kernel_size[0]


def tiny_speech_model(path: Path, family: str) -> Path:
    """The kit's tiny speech model of ``family``: "wav2vec2" (or "ctc"), "whisper", "speech2text", "moonshine"."""
    from taskzoo.testing import speech

    builders = {"wav2vec2": speech.tiny_ctc, "ctc": speech.tiny_ctc, "whisper": speech.tiny_whisper,
                "speech2text": tiny_speech2text, "moonshine": tiny_moonshine}
    if family not in builders:
        raise ValueError(f"family must be one of {', '.join(map(repr, builders))}; got {family!r}.")
    return builders[family](path)
