"""Audio inputs: their length without decoding, a mono waveform at the model's rate from any form a user has
(path, bytes, array with its rate, datasets' dict), and the silent-clip check. Decoded with soundfile and
resampled with scipy: datasets' torchcodec decoder does not import beside the CPU build of torch.

Like data.py, everything here refuses bad input with a message that names the file or value.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from taskzoo.errors import DataError


def audio_length(audio: Any) -> int:
    """Samples in an audio input (path, dict, (array, rate) or array) without decoding it; 0 if unknown.
    Only a sort key for batching: decoding later names a bad input."""
    try:
        if isinstance(audio, (str, os.PathLike)):
            import soundfile

            return soundfile.info(str(audio)).frames
        array = audio.get("array") if isinstance(audio, Mapping) else audio[0] if isinstance(audio, tuple) else audio
        return len(array) if array is not None else 0
    except Exception:  # noqa: BLE001
        return 0


def load_audio(audio: Any, sampling_rate: int):
    """A mono float32 waveform at ``sampling_rate`` from a path, an array (with its rate) or a dict.

    Decoded with soundfile (libsndfile ships in its wheel) and resampled with scipy, because datasets'
    torchcodec decoder does not import beside the CPU build of torch.
    """
    import soundfile

    source, rate = "<array>", sampling_rate
    if isinstance(audio, Mapping):
        if audio.get("array") is not None:
            audio, rate = audio["array"], audio.get("sampling_rate")
            if rate is None:
                raise DataError("An audio dict with 'array' needs its 'sampling_rate'.")
        else:
            source = audio.get("path") or "<audio bytes>"
            audio = io.BytesIO(audio["bytes"]) if audio.get("bytes") else audio.get("path")
    elif isinstance(audio, tuple) and len(audio) == 2:  # (array, sampling_rate)
        audio, rate = audio
    if isinstance(audio, (str, os.PathLike, io.BytesIO)):
        source = source if isinstance(audio, io.BytesIO) else str(audio)
        if isinstance(audio, (str, os.PathLike)) and not Path(audio).exists():
            raise DataError(f"Audio file {source} does not exist.")
        try:
            audio, rate = soundfile.read(audio, dtype="float32", always_2d=False)
        except Exception as error:  # libsndfile's errors vary; name the file
            raise DataError(f"Audio {source} could not be decoded (not audio, or corrupted): {error}") from error
    waveform = np.asarray(audio, dtype=np.float32)
    if waveform.ndim == 2:  # (samples, channels) from soundfile, or (channels, samples) from users
        waveform = waveform.mean(axis=1 if waveform.shape[0] > waveform.shape[1] else 0)
    if waveform.ndim != 1 or waveform.size == 0:
        raise DataError(f"Audio {source} is empty or not a waveform (shape {waveform.shape}).")
    if rate != sampling_rate:
        from math import gcd

        from scipy.signal import resample_poly

        divisor = gcd(int(rate), int(sampling_rate))
        waveform = resample_poly(waveform, sampling_rate // divisor, int(rate) // divisor).astype(np.float32)
    return waveform


def check_transcribed_audio(waveform, text: str, source) -> None:
    """A silent clip with a transcript is a data bug (a wrong file, a failed recording): refuse it rather
    than teach a model to hear words in silence."""
    if text.strip() and not np.abs(waveform).max() > 1e-6:
        name = source if isinstance(source, str) else (source.get("path") if isinstance(source, Mapping) else None)
        raise DataError(f"Audio {name or '<array>'} is silent (every sample is 0) but its transcript is {text!r:.60}.")
