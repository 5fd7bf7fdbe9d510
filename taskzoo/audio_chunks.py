"""Long audio for speech recognition: overlapping windows, and their outputs stitched back together.

The arithmetic is that of transformers' ASR pipeline (``chunk_iter`` and ``postprocess``), so a CTC
transcript equals ``pipeline(..., chunk_length_s=C, stride_length_s=S)``'s exactly. Unlike the pipeline,
which ignores ``batch_size`` for a single long file (transformers issue 20783), the caller batches the
windows of all its inputs together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Window:
    item: int  # index of the input this window belongs to
    audio: np.ndarray  # the window's samples
    left: int  # samples at the start that overlap the previous window (0 for the first)
    right: int  # samples at the end that overlap the next window (0 for the last)


def window_lengths(chunk_length_s: float, stride_length_s: float | None, sampling_rate: int,
                   align_to: int = 1) -> tuple[int, int]:
    """(window, stride) in samples, rounded to whole model frames; the stride defaults to a sixth."""
    if stride_length_s is None:
        stride_length_s = chunk_length_s / 6
    window = int(round(chunk_length_s * sampling_rate / align_to) * align_to)
    stride = int(round(stride_length_s * sampling_rate / align_to) * align_to)
    if window <= 2 * stride:
        raise ValueError(f"chunk_length_s={chunk_length_s} must exceed twice stride_length_s={stride_length_s}.")
    return window, stride


def split(item: int, audio: np.ndarray, window: int, stride: int) -> list[Window]:
    """Windows of ``window`` samples, consecutive ones overlapping by ``2 * stride``. Audio no longer
    than one window is a single window without strides."""
    step = window - 2 * stride
    windows = []
    for start in range(0, len(audio), step):
        end = start + window
        is_last = end >= len(audio)
        left, right = (0 if start == 0 else stride), (0 if is_last else stride)
        chunk = audio[start:end]
        if len(chunk) > left:  # a tail that lies entirely in the previous window's stride adds nothing
            windows.append(Window(item, chunk, left, right))
        if is_last:
            break
    return windows


def batches(windows: list[Window], size: int, same_length: bool) -> list[list[Window]]:
    """Windows in groups of at most ``size``. ``same_length``: only windows of equal length share a
    group, for models that cannot mask padding (wav2vec2-base's group-normalised front end normalises
    over padding too, so a padded clip would transcribe differently from the same clip alone). The
    windows of long inputs all have one length, so they still batch."""
    if not same_length:
        return [windows[start:start + size] for start in range(0, len(windows), size)]
    by_length: dict[int, list[Window]] = {}
    for window in windows:
        by_length.setdefault(len(window.audio), []).append(window)
    return [group[start:start + size] for group in by_length.values() for start in range(0, len(group), size)]


def ctc_frames(logits: torch.Tensor, window: Window, valid_frames: int, align_to: int) -> torch.Tensor:
    """The frames of one window's logits that belong to it alone (the strides cut off).

    ``valid_frames`` is the number of frames its own samples produce: in a padded batch the frames
    after them are garbage, since the CTC loss never scored such frames during training.
    """
    total = int(round(len(window.audio) / align_to))
    left = int(round(window.left / len(window.audio) * total))
    right = int(round(window.right / len(window.audio) * total))
    return logits[left:min(total - right, valid_frames)]


def whisper_output(tokens: torch.Tensor, window: Window, sampling_rate: int, chunked: bool) -> dict:
    """One window's generated tokens in the form the Whisper tokenizer's stitcher reads."""
    output = {"tokens": tokens[None].cpu()}
    if chunked:  # the stitcher wants the window and its strides in seconds
        output["stride"] = (len(window.audio) / sampling_rate, window.left / sampling_rate,
                            window.right / sampling_rate)
    return output


def stitch_whisper(tokenizer, outputs: list[dict], return_timestamps: bool, time_precision: float) -> dict:
    """Merge the windows' tokens where they overlap (and their timestamps), as the pipeline does.

    This is the Whisper tokenizer's ``_decode_asr``, the routine transformers' ASR pipeline calls: it
    finds the longest common token sequence between neighbouring windows and shifts timestamps by
    each window's offset. Special tokens never reach the text.
    """
    text, extra = tokenizer._decode_asr(outputs, return_timestamps=return_timestamps, return_language=False,
                                        time_precision=time_precision)
    result = {"text": text.strip()}
    if return_timestamps:
        result["chunks"] = [{"text": chunk["text"].strip(), "timestamp": tuple(chunk["timestamp"])}
                            for chunk in extra.get("chunks", [])]
    return result
