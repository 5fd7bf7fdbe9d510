"""Length limits for the tasks that generate text token by token (translation, Whisper speech recognition).

A checkpoint whose generation config sets no length would otherwise get ``generate``'s model-agnostic
default of 20 tokens in all, silently cutting longer outputs. Here the limit is, in order: the caller's
``max_new_tokens``, the checkpoint's own ``max_new_tokens`` or ``max_length``, what the decoder's position
table allows (``max_target_positions`` / ``max_position_embeddings``), else ``DEFAULT_MAX_NEW_TOKENS``.
Outputs that stop at that limit rather than at their end token are counted, so that the task can warn once
per call (see ``Task.warn_truncated``).
"""

from __future__ import annotations

import torch

DEFAULT_MAX_NEW_TOKENS = 256  # where neither the checkpoint nor its position table gives a length


def new_token_budget(model, max_new_tokens: int | None = None, prompt_length: int = 1) -> int:
    """How many tokens ``generate`` may add after a decoder prompt of ``prompt_length`` tokens (the decoder
    start token, or Whisper's start, language, task and timestamp tokens)."""
    if max_new_tokens is not None:
        return max_new_tokens
    config = model.generation_config
    if config.max_new_tokens is not None:
        return config.max_new_tokens
    decoder = model.config.get_text_config(decoder=True)
    total = config.max_length or getattr(decoder, "max_target_positions", None) or \
        getattr(decoder, "max_position_embeddings", None)
    return max(1, total - prompt_length) if total else DEFAULT_MAX_NEW_TOKENS


def generate(task, model, /, *, max_new_tokens: int | None = None, prompt_length: int = 1,
             prompt_in_output: bool = True, **options) -> torch.Tensor:
    """``model.generate(**options)`` with the length limit above, counting on ``task`` the outputs that hit it.

    ``prompt_in_output``: whether the returned rows start with the prompt (Whisper's do not, and it also drops
    their end token).
    """
    from accelerate.utils import extract_model_from_parallel

    model = extract_model_from_parallel(model)  # under DistributedDataParallel, generate() is on the wrapped model
    budget = new_token_budget(model, max_new_tokens, prompt_length)
    # max_length=None: the budget replaces the checkpoint's max_length (else generate warns that both are set).
    output = model.generate(**options, max_new_tokens=budget, max_length=None)
    count_cut(task, model, output[:, prompt_length if prompt_in_output else 0:], budget,
              options.get("forced_eos_token_id", model.generation_config.forced_eos_token_id) is not None)
    return output


def count_cut(task, model, generated: torch.Tensor, budget: int, forced_end: bool = False) -> None:
    """Count on ``task`` the rows of ``generated`` (prompt removed) that stopped at the limit, not at their end."""
    cut = int(stopped_at_limit(generated, budget, _end_ids(model.generation_config), forced_end).sum())
    if cut:
        task.count_cut_outputs(cut, budget)


def stopped_at_limit(generated: torch.Tensor, budget: int, end_ids: list[int], forced_end: bool) -> torch.Tensor:
    """Per row of generated tokens (prompt removed): True where it ran out of budget instead of ending.

    A row with no end (or padding) token ran to the limit. With ``forced_end`` (Marian, BART: the end token is
    forced as the last one the limit allows) a row whose end token sits exactly at the limit was cut too.
    """
    is_end = torch.isin(generated, torch.tensor(end_ids, device=generated.device))
    ended = is_end.any(dim=1)
    cut = ~ended & (generated.shape[1] >= budget)
    if forced_end:
        cut |= ended & (is_end.int().argmax(dim=1) == budget - 1)
    return cut


def _end_ids(config) -> list[int]:
    """End-of-sequence ids, and the padding that follows them in a batch."""
    ends = config.eos_token_id
    ends = [] if ends is None else [ends] if isinstance(ends, int) else list(ends)
    return ends + ([config.pad_token_id] if config.pad_token_id is not None else [])
