"""Greedy Whisper decoding for predict, without ``generate``'s per-step bookkeeping.

predict's usual Whisper call is short-form (each window at most 30 s; ``audio_chunks`` cuts longer audio),
greedy and without timestamps. For that case ``decode`` runs the encoder once per batch of windows, then one
decoder step per token, and drops the rows that have ended from the batch (with their cached keys and values),
so a batch costs what its rows need rather than what its longest row needs. It reproduces ``generate``'s
tokens: the same prompt (<|startoftranscript|>, language and task on multilingual models, <|notimestamps|>),
the checkpoint's ``suppress_tokens`` at every step and ``begin_suppress_tokens`` at the first, the same argmax.
``applies`` says when the checkpoint asks for anything else (beams, sampling, temperature fallback, no-speech
detection, an unknown language), and then the task calls ``generate``.
"""

from __future__ import annotations

import torch

from taskzoo import generation, strategies

GREEDY_DEFAULTS = {"num_beams": 1, "do_sample": False, "no_speech_threshold": None, "logprob_threshold": None,
                   "compression_ratio_threshold": None, "prompt_ids": None}


def greedy_tokens(task, model, input_features: torch.Tensor, options: dict) -> torch.Tensor | None:
    """``decode`` within taskzoo's length limit, the outputs cut by it counted on ``task`` (as
    ``generation.generate`` does); None where these options or this checkpoint need ``generate``."""
    from accelerate.utils import extract_model_from_parallel

    model = extract_model_from_parallel(model)  # DistributedDataParallel hides the model's config and encoder
    model = model.get_base_model() if strategies.is_peft(model) else model  # LoRA layers sit inside it
    if not applies(model, options):
        return None
    start = prompt(model, options)
    budget = generation.new_token_budget(model, options.get("max_new_tokens"), len(start))
    if len(start) + budget > model.config.max_target_positions:
        return None  # generate says what is wrong
    tokens = decode(model, input_features, options, budget)
    generation.count_cut(task, model, tokens, budget)
    return tokens


def applies(model, options: dict) -> bool:
    """Whether ``decode`` gives generate's tokens for these options and this checkpoint."""
    config = model.generation_config
    if options.get("return_timestamps") or set(options) - {"language", "task", "max_new_tokens", "return_timestamps"}:
        return False  # timestamps, or a generate option of the caller's own
    if any(getattr(config, key, None) not in (None, default) for key, default in GREEDY_DEFAULTS.items()):
        return False
    if isinstance(getattr(config, "temperature", None), (list, tuple)):
        return False  # temperature fallback
    if getattr(config, "is_multilingual", False) and options.get("language") is None:
        return False  # generate detects the language
    return all(hasattr(model, name) for name in ("model", "proj_out")) and prompt(model, options) is not None


def prompt(model, options: dict) -> list[int] | None:
    """The decoder prompt generate builds for a short-form window without timestamps; None where it would
    build another (old ``forced_decoder_ids`` that say something else)."""
    from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

    config = model.generation_config
    tokens = [config.decoder_start_token_id]
    if getattr(config, "is_multilingual", False):
        language = options["language"].lower()
        code = language if language.startswith("<|") else f"<|{TO_LANGUAGE_CODE.get(language, language)}|>"
        task = options.get("task") or "transcribe"
        if code not in config.lang_to_id or task not in config.task_to_id:
            return None  # generate raises its own error for these
        tokens += [config.lang_to_id[code], config.task_to_id[task]]
    else:
        forced = getattr(config, "forced_decoder_ids", None) or []
        if [token for _, token in forced] not in ([], [config.no_timestamps_token_id]):
            return None
    return tokens + [config.no_timestamps_token_id]


@torch.no_grad()  # not inference_mode: the model may train later (see Task.predict)
def decode(model, input_features: torch.Tensor, options: dict, budget: int) -> torch.Tensor:
    """Greedy tokens for a batch of 30 s windows' features: one row per window, the prompt left out, rows
    that ended early padded with the end token, as ``generate`` returns them (it keeps the end token of a row
    only when another row runs longer, and so does this)."""
    config = model.generation_config
    start = prompt(model, options)
    end = config.eos_token_id if isinstance(config.eos_token_id, int) else config.eos_token_id[0]
    vocab = model.config.vocab_size
    suppress = _mask(config.suppress_tokens, vocab, input_features.device)
    first_suppress = suppress | _mask(config.begin_suppress_tokens, vocab, input_features.device)

    encoded = model.model.encoder(input_features).last_hidden_state
    batch = len(encoded)
    tokens = torch.full((batch, budget), end, dtype=torch.long, device=encoded.device)
    rows = torch.arange(batch, device=encoded.device)  # which windows are still decoding
    step_input = torch.tensor([start], device=encoded.device).expand(batch, -1)
    cache = None  # the decoder makes its own on the first step: keys and values of both attentions
    for step in range(budget):
        output = model.model.decoder(input_ids=step_input, encoder_hidden_states=encoded, cache=cache,
                                     use_cache=True)
        cache = output.cache
        logits = model.proj_out(output.last_hidden_state[:, -1]).float()
        logits.masked_fill_(first_suppress if step == 0 else suppress, float("-inf"))
        chosen = logits.argmax(-1)
        tokens[rows, step] = chosen
        going = chosen != end
        if not bool(going.all()):
            if not bool(going.any()):
                return tokens[:, :step + 1]
            keep = going.nonzero().squeeze(1)
            rows, chosen, encoded = rows[keep], chosen[keep], encoded[keep]
            cache.batch_select_indices(keep)
        step_input = chosen[:, None]
    return tokens


def _mask(ids, vocab: int, device) -> torch.Tensor:
    mask = torch.zeros(vocab, dtype=torch.bool, device=device)
    ids = [i for i in (ids or []) if i < vocab]
    if ids:
        mask[torch.tensor(ids, device=device)] = True
    return mask
