"""Speech encoder-decoders for the speech-recognition task: Whisper, and any other ``AutoModelForSpeechSeq2Seq``
with its processor (Speech2Text and Moonshine are tested; others of that class, such as SpeechT5, take the same path
untested).

What differs between them lives here:

- Inputs. Whisper's log-mel features always span its 30 s window; the others take a padded batch as their feature
  extractor makes it (Speech2Text's filterbanks, Moonshine's raw waveform) with its attention mask.
- The prompt. Whisper's decoder starts with <|startoftranscript|>, the language and the task (multilingual
  models) and <|notimestamps|> unless timestamps are predicted; a multilingual Speech2Text's first token is its
  target language (forced, as its model card does); the others start from the decoder start token alone.
- Long audio. Whisper's windows are stitched by its tokenizer (timestamps shifted by each window's offset); the
  others' token sequences are joined where they overlap best (``merge_windows``).
- A Whisper checkpoint whose generation config was written from the model config (``_from_model_config``, common
  in fine-tuned community checkpoints) lacks Whisper's own keys; they are derived from its tokenizer at load.
"""

from __future__ import annotations

import logging

import torch
from accelerate.utils import extract_model_from_parallel

from taskzoo import generation
from taskzoo.errors import DataError

logger = logging.getLogger(__name__)
ENGLISH_ONLY_VOCAB = 51864  # OpenAI's English-only Whisper vocabularies; the multilingual ones are larger


def is_whisper(tokenizer) -> bool:
    """Whisper's tokenizer: its prompt tokens, timestamps and window stitcher (``_decode_asr``)."""
    return hasattr(tokenizer, "_decode_asr")


def complete_whisper_generation_config(model, tokenizer) -> list[str]:
    """Fill the Whisper keys that ``model.generation_config`` lacks from the tokenizer's special tokens; returns
    the keys filled. A generation config written from the model config (``_from_model_config: true``) loads with
    only the model config's keys (start, end, suppressed tokens): transformers drops the others, even where the
    file holds them. Without them Whisper's prompt, timestamps and language options fail."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    config, vocab = model.generation_config, tokenizer.get_vocab()
    languages = {f"<|{code}|>": vocab[f"<|{code}|>"] for code in LANGUAGES if f"<|{code}|>" in vocab}
    derived = {
        "no_timestamps_token_id": vocab.get("<|notimestamps|>"),
        "prev_sot_token_id": vocab.get("<|startofprev|>"),
        "lang_to_id": languages or None,
        "task_to_id": {task: vocab[f"<|{task}|>"] for task in ("transcribe", "translate") if f"<|{task}|>" in vocab}
        or None,
        # OpenAI's own rule for its vocabularies (their English-only tokenizers list the languages too); a
        # vocabulary of another size is multilingual when it has language tokens.
        "is_multilingual": bool(languages) and model.config.vocab_size != ENGLISH_ONLY_VOCAB,
        "max_initial_timestamp_index": 50,  # the first timestamp within 1 s, as OpenAI decodes
    }
    filled = [key for key, value in derived.items() if value is not None and getattr(config, key, None) is None]
    for key in filled:
        setattr(config, key, derived[key])
    if filled:
        logger.info("The generation config lacks Whisper's %s; derived from the tokenizer.", ", ".join(filled))
        config._from_model_config = False  # else transformers drops these keys again when the saved folder loads
    return filled


# ----------------------------------------------------------------------------------------- inputs and labels
def model_inputs(feature_extractor, audio: list, whisper: bool) -> dict:
    """Model inputs for a batch of waveforms at the feature extractor's rate."""
    rate = feature_extractor.sampling_rate
    if whisper and max(map(len, audio)) > feature_extractor.n_samples:
        raise DataError(f"An audio clip of {max(map(len, audio)) / rate:.1f} s is longer than the model's "
                        f"{feature_extractor.chunk_length} s window; split such clips for training and evaluation "
                        "(predict() chunks long inputs itself).")
    # Whisper pads every clip to its window; the others to the longest clip of the batch. Outside predict's
    # bf16 autocast: a spectrogram computed in bf16 fails.
    with torch.autocast("cpu", enabled=False):
        features = feature_extractor(audio, sampling_rate=rate, return_attention_mask=True, return_tensors="pt",
                                     **({} if whisper else {"padding": True}))
    return dict(features)


def labels(task, texts: list[str]) -> torch.Tensor:
    """Label ids of ``texts``: the prompt tokens that follow the decoder start token (Whisper's language, task
    and <|notimestamps|>; a multilingual Speech2Text's language), the text, the end token; padding is -100."""
    tokenizer, config = task.tokenizer, task.model.config
    if task.is_whisper:
        if is_multilingual_whisper(task.model):
            tokenizer.set_prefix_tokens(language=whisper_language(task, for_training=True), task=task.whisper_task)
        texts = [" " + text.strip() for text in texts]  # Whisper's transcripts start with a space
    elif target_languages(tokenizer):
        tokenizer.tgt_lang = target_language(task)  # its prefix: the language token
    start, end = config.decoder_start_token_id, tokenizer.eos_token_id
    rows = []
    for ids in tokenizer(texts).input_ids:
        ids = ids[1:] if ids and ids[0] == start else ids  # the model prepends the decoder start token itself
        rows.append(ids if ids and ids[-1] == end else [*ids, end])  # Moonshine's tokenizer adds no end token
    limit = decoder_positions(task.model)
    longest = max(range(len(rows)), key=lambda i: len(rows[i]))
    if limit and len(rows[longest]) > limit:
        raise DataError(f"A transcript is {len(rows[longest])} tokens long, over the model's {limit}: "
                        f"{texts[longest].strip()[:80]!r}...")
    padded = torch.full((len(rows), len(rows[longest])), -100, dtype=torch.long)
    for i, ids in enumerate(rows):
        padded[i, :len(ids)] = torch.tensor(ids)
    return padded


def decoder_inputs(model, labels: torch.Tensor) -> dict:
    """The decoder's inputs for ``labels`` from the model's own function where it has one (speech-encoder-decoder
    pairs); the others (Whisper, Speech2Text, Moonshine) shift the labels inside their forward."""
    model = extract_model_from_parallel(model)
    prepare = getattr(model, "prepare_decoder_input_ids_from_labels", None)
    return {"decoder_input_ids": prepare(labels=labels)} if prepare is not None else {}


def decoder_positions(model) -> int | None:
    decoder = model.config.get_text_config(decoder=True)
    return getattr(decoder, "max_target_positions", None) or getattr(decoder, "max_position_embeddings", None)


# ------------------------------------------------------------------------------------------ options, generate
def is_multilingual_whisper(model) -> bool:
    return bool(getattr(model.generation_config, "is_multilingual", False))


def target_languages(tokenizer) -> dict:
    """A multilingual Speech2Text tokenizer's language codes and their token ids ({} for the others)."""
    return getattr(tokenizer, "lang_code_to_id", None) or {}


def whisper_language(task, language=None, for_training=False):
    config = task.model.generation_config
    language = language or task.language or getattr(config, "language", None) or task.tokenizer.language
    if language is None and for_training:
        raise ValueError("Fine-tuning a multilingual Whisper model needs the language of the transcripts: "
                         "taskzoo.load(..., language='en') (or 'french', 'fr', ...).")
    return language


def target_language(task, language=None) -> str | None:
    """A multilingual Speech2Text's target language: ``language``, the one given to load, else its tokenizer's;
    None for models that take no language. A language the model does not know is a ValueError."""
    codes = target_languages(task.tokenizer)
    language = language or task.language or (task.tokenizer.tgt_lang if codes else None)
    if language is not None and language not in codes:
        known = f"it knows {', '.join(sorted(codes))}" if codes else "only Whisper and multilingual Speech2Text do"
        raise ValueError(f"This {task.model.config.model_type!r} model takes no language {language!r}: {known}.")
    return language


def generate_options(task, /, language=None, return_timestamps=False, **options) -> dict:
    """Checked ``generate`` options: Whisper's prompt (always the language and task it was trained with, else it
    detects the language and drops the task token), a multilingual Speech2Text's language as its forced first
    token, and the caller's other ``generate`` options (``num_beams``, ...)."""
    if task.is_whisper:
        options["return_timestamps"] = bool(return_timestamps)
        if is_multilingual_whisper(task.model):
            options.update(language=whisper_language(task, language), task=options.get("task") or task.whisper_task)
        elif language or options.get("task"):
            raise ValueError("This Whisper model is English-only: it takes no language or whisper_task.")
        return {key: value for key, value in options.items() if value is not None}
    if return_timestamps or options.get("task"):
        asked = ("return_timestamps applies to Whisper and CTC" if return_timestamps
                 else "whisper_task applies to Whisper")
        raise ValueError(f"{asked} models; this is a {task.model.config.model_type!r} encoder-decoder.")
    options.pop("task", None)
    language = target_language(task, language)
    if language is not None:
        options["forced_bos_token_id"] = target_languages(task.tokenizer)[language]
    return options


def generate(task, model, inputs: dict, options: dict) -> torch.Tensor:
    """Generated tokens of a batch, within taskzoo's length limit (see taskzoo/generation.py). Whisper's rows
    hold no prompt; the others' start with the decoder start token."""
    options = dict(options)
    budget = options.pop("max_new_tokens", None)
    if task.is_whisper:
        multilingual = is_multilingual_whisper(extract_model_from_parallel(model))
        prompt = 1 + 2 * multilingual + (not options.get("return_timestamps"))
        prompt += 0 if options.get("prompt_ids") is None else len(options["prompt_ids"])  # <|startofprev|>, text
        # One pass per window: generate's long-form loop would decode a window again from its last complete
        # segment, its timestamps restarting there. One pass returns the prompt too (and the end token, which
        # decoding skips).
        output = generation.generate(task, model, max_new_tokens=budget, prompt_length=prompt,
                                     force_unique_generate_call=True, **inputs, **options)
        return output[:, prompt:]
    return generation.generate(task, model, max_new_tokens=budget, **inputs, **options)


# -------------------------------------------------------------------------------------------------- long audio
def merge_windows(tokenizer, rows: list[torch.Tensor]) -> str:
    """The text of one input from the generated tokens of its overlapping windows, in order. Each next window
    is joined where the end of the text so far and its start agree best: the overlap length with the largest
    share of equal tokens (at least two; longer overlaps win ties) is kept once. This is the rule of
    transformers' ASR pipeline for encoder-decoders other than Whisper."""
    special = set(tokenizer.all_special_ids)
    merged: list[int] = []
    for row in rows:
        tokens = [token for token in row.tolist() if token not in special]
        best, overlap = 0.0, 0
        for length in range(1, min(len(merged), len(tokens)) + 1):
            equal = sum(a == b for a, b in zip(merged[-length:], tokens[:length]))
            score = equal / length + length / 10000
            if equal > 1 and score > best:
                best, overlap = score, length
        merged += tokens[overlap:]
    return tokenizer.decode(merged, skip_special_tokens=True).strip()
