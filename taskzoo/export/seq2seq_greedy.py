"""Greedy decoding over an exported encoder-decoder: the tokens of transformers' ``generate()``, with less work.

``generate()`` runs its logits processors on whole (batch, vocabulary) torch tensors at every step and keeps
decoding rows that have already ended. This loop applies the settings greedy translation uses (a forced first and
last token, suppressed tokens, single-token bad words, a minimum length, one or more end tokens) on the host arrays
the sessions return, and drops the rows that have ended from the batch, with their keys and values, so that a batch
costs what its rows need. It returns None where a call or the checkpoint asks for anything else (beams, sampling,
repetition penalties, a model class with its own generate such as Whisper's): the class's ``generate()`` runs then.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

# Generation settings this loop follows, and settings whose values leave greedy decoding as it is.
FOLLOWED = {"decoder_start_token_id", "bos_token_id", "eos_token_id", "pad_token_id", "max_length", "max_new_tokens",
            "min_length", "min_new_tokens", "forced_bos_token_id", "forced_eos_token_id", "suppress_tokens",
            "begin_suppress_tokens", "bad_words_ids", "transformers_version", "_from_model_config",
            # sampling and beam settings, unused by greedy decoding
            "temperature", "top_k", "top_p", "min_p", "typical_p", "length_penalty", "early_stopping"}
NEUTRAL = {"num_beams": 1, "num_beam_groups": 1, "do_sample": False, "num_return_sequences": 1, "use_cache": True,
           "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
           "encoder_no_repeat_ngram_size": 0, "output_scores": False, "output_logits": False,
           "output_attentions": False, "output_hidden_states": False, "return_dict_in_generate": False,
           "renormalize_logits": False, "remove_invalid_values": False}
INPUTS = ("input_ids", "attention_mask", "input_features", "input_values")


def _ids(value) -> list[int]:
    return [] if value is None else [value] if isinstance(value, int) else list(value)


def settings(model, options: dict):
    """The generation config for these ``generate()`` options, or None where this loop cannot follow them."""
    from transformers import GenerationMixin

    own = next(c for c in type(model).__mro__ if "generate" in c.__dict__ and c.__name__ != "OrtEncoderDecoder")
    if own is not GenerationMixin:
        return None  # Whisper and others decode by their own rules
    config = copy.deepcopy(model.generation_config)
    unused = config.update(**{key: value for key, value in options.items() if key not in INPUTS})
    if unused:
        return None  # a logits processor, a streamer, decoder_input_ids, ...
    for key, value in config.to_dict().items():
        if value is not None and key not in FOLLOWED and NEUTRAL.get(key, object()) != value:
            return None
    if any(len(words) != 1 for words in config.bad_words_ids or []):
        return None
    if config.max_new_tokens is None and config.max_length is None or not _ids(config.eos_token_id):
        return None
    return config


def generate(model, *args, **options) -> torch.Tensor | None:
    """``model.generate(**options)``'s tokens (decoder start token first, ended rows padded), or None."""
    config = None if args else settings(model, options)
    if config is None:
        return None
    encoded = model.get_encoder()(**{key: options.get(key) for key in INPUTS}).last_hidden_state.numpy()
    mask = model.source_mask(options.get("attention_mask"), encoded.shape[:2])
    return torch.from_numpy(decode(model, encoded, mask, config))


def decode(model, encoded: np.ndarray, mask: np.ndarray | None, config) -> np.ndarray:
    start, ends = config.decoder_start_token_id, _ids(config.eos_token_id)
    pad = config.pad_token_id if config.pad_token_id is not None else ends[0]
    budget = config.max_new_tokens if config.max_new_tokens is not None else config.max_length - 1

    batch = len(encoded)
    tokens = np.full((batch, 1 + budget), pad, dtype=np.int64)
    tokens[:, 0] = start
    cross = model.cross_attention(encoded)
    past = model.empty_past(cross)
    rows = np.arange(batch)  # the rows still decoding
    step_input = tokens[:, :1]
    for step in range(budget):
        logits, past = model.decode(step_input, mask, past, cross)
        scores = logits[:, -1].astype(np.float32, copy=True)
        if step == 0:  # masks as long as the logits (which may be longer than the tokenizer's vocabulary)
            vocab = scores.shape[-1]
            suppress = _mask([*_ids(config.suppress_tokens), *(w[0] for w in config.bad_words_ids or [])], vocab)
            first_suppress, end_mask = suppress | _mask(config.begin_suppress_tokens, vocab), _mask(ends, vocab)
        scores[:, first_suppress if step == 0 else suppress] = -np.inf
        length = step + 1  # tokens so far, the start token included (generate's cur_len)
        if length < (config.min_length or 0) or step < (config.min_new_tokens or 0):
            scores[:, end_mask] = -np.inf
        chosen = scores.argmax(-1)
        if step == 0 and config.forced_bos_token_id is not None:
            chosen[:] = config.forced_bos_token_id
        if step == budget - 1 and config.forced_eos_token_id is not None:
            chosen[:] = _ids(config.forced_eos_token_id)[0]
        tokens[rows, step + 1] = chosen
        going = ~np.isin(chosen, ends)
        if not going.all():
            if not going.any():
                return tokens[:, :step + 2]
            keep = np.flatnonzero(going)
            rows, chosen = rows[keep], chosen[keep]
            past, cross = [t[keep] for t in past], [t[keep] for t in cross]
            mask = mask[keep] if mask is not None else None
        step_input = chosen[:, None]
    return tokens


def _mask(ids, vocab: int) -> np.ndarray:
    mask = np.zeros(vocab, dtype=bool)
    mask[[i for i in _ids(ids) if 0 <= i < vocab]] = True
    return mask
