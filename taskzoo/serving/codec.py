"""JSON <-> predict inputs and outputs for the server, with the size limits a public endpoint needs.

Images and audio arrive as base64 strings (a ``data:`` URL prefix is accepted) or as uploaded file bytes; they
are decoded here, in memory. A string is never opened as a path or fetched as a URL: where an image or audio
is expected, a string that is not base64 is refused, so a request cannot make the server read its own files.
Outputs go back as JSON: PIL images (generated images, masks) as base64 PNG strings, tuples as lists.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from taskzoo import data as data_utils
from taskzoo.audio import load_audio
from taskzoo.predict_options import check_options

# predict() options that are the server's to set (it batches), not a request's.
SERVER_OPTIONS = ("batch_size", "progress", "compile", "num_workers")
URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:(//|[^;,]*$)")  # http://..., file:..., s3://...; not data:...;base64,
DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+(;[\w=.-]+)*;base64,", re.I)


class RequestError(Exception):
    """A request the server refuses: ``status`` is the HTTP status, the message goes back as ``{"error"}``."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """What one request may send. The defaults fit photos and a few minutes of speech."""

    max_body_bytes: int = 32 * 2**20  # the whole request body (base64 adds a third to file sizes)
    max_image_pixels: int = 40_000_000  # width x height of one decoded image (a 40 MP photo)
    max_audio_seconds: float = 600.0  # length of one audio input
    max_inputs: int = 256  # inputs in one request
    timeout_s: float = 300.0  # from arrival to answer, queueing and prediction included

    def __post_init__(self):
        for name in ("max_body_bytes", "max_image_pixels", "max_audio_seconds", "max_inputs", "timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number; got {value!r}.")


# ------------------------------------------------------------------------------------------------ inputs


def decode_request(task, body: Any, limits: Limits) -> tuple[list, bool, dict]:
    """A parsed JSON body ``{"inputs": ..., "parameters": {...}}`` -> (inputs as predict takes them, whether
    ``inputs`` was one input, parameters)."""
    if not isinstance(body, dict):
        raise RequestError('The request body must be a JSON object: {"inputs": ..., "parameters": {...}}; '
                           f"got a JSON {json_type(body)}.")
    unknown = sorted(set(body) - {"inputs", "parameters"})
    if unknown:
        raise RequestError(f"Unknown field(s) {unknown} in the request body; it takes 'inputs' and 'parameters'.")
    if "inputs" not in body:
        raise RequestError(f"The request body has no 'inputs' field: send {{\"inputs\": {example_input(task)}}}.")
    parameters = check_parameters(task, body.get("parameters"), limits)  # before decoding any input
    items, single = decode_inputs(task, body["inputs"], limits)
    return items, single, parameters


def check_parameters(task, parameters: Any, limits: Limits) -> dict:
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise RequestError(f"'parameters' must be a JSON object of predict options; got {parameters!r:.80}.")
    refused = [name for name in SERVER_OPTIONS if name in parameters]
    if refused:
        raise RequestError(f"'parameters' may not set {refused}: the server chooses how it batches "
                           "(see taskzoo serve --max-batch-size).")
    check_options(task, parameters, unlisted=SERVER_OPTIONS)  # a wrong name or type of value: named, 400
    size = [parameters.get(side, getattr(task, "native_size", None)) for side in ("width", "height")]
    if task.outputs_images and all(isinstance(side, int) for side in size):  # an image it would generate
        check_pixels(*size, "The image to generate", limits)
    return parameters


def decode_inputs(task, inputs: Any, limits: Limits) -> tuple[list, bool]:
    """JSON inputs -> (a list of predict inputs, whether one input was sent)."""
    media = media_of(task)
    if media is None:
        check_text(task, inputs, "inputs")
    # A two-element list is one pair where the task cannot take its elements alone (sentence-similarity);
    # for text-classification, which takes both, ["a", "b"] is two texts and [["a", "b"]] one pair.
    if (media is None and isinstance(inputs, list) and len(inputs) == 2 and task.is_single(tuple(inputs))
            and not all(task.is_single(value) for value in inputs)):
        return [tuple(inputs)], True
    if isinstance(inputs, list) and len(inputs) > limits.max_inputs:  # before decoding any of them
        raise RequestError(f"A request may hold at most {limits.max_inputs} inputs; this one holds {len(inputs)}.",
                           413)
    if isinstance(inputs, list):
        items = [decode_item(task, media, value, f"inputs[{i}]", limits) for i, value in enumerate(inputs)]
    else:
        items = [decode_item(task, media, inputs, "inputs", limits)]
    if not items:
        raise RequestError("'inputs' is an empty list: send at least one input.")
    return items, not isinstance(inputs, list)


def check_text(task, value: Any, where: str) -> None:
    """A text task's inputs hold strings (null for an absent ``text_pair``) in lists and objects; a number or
    boolean anywhere is refused here, named by its place, rather than failing inside the tokenizer."""
    if isinstance(value, list):
        for i, item in enumerate(value):
            check_text(task, item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(task, item, f"{where}.{key}")
    elif value is not None and not isinstance(value, str):
        raise RequestError(f"{where} is a JSON {json_type(value)} ({json.dumps(value)}), not text: {task.name} takes "
                           f"strings; send, for example, {{\"inputs\": {example_input(task)}}}.")


def decode_item(task, media: str | None, value: Any, where: str, limits: Limits) -> Any:
    if media is None:  # text tasks: strings and objects as they are, two-element lists as pairs
        item = tuple(value) if isinstance(value, list) and len(value) == 2 else value
        if not task.is_single(item):  # the task's own test of what one input is
            raise RequestError(f"{where} is not a {task.name} input (got a JSON {json_type(value)}); "
                               f"send, for example, {{\"inputs\": {example_input(task)}}}.")
        return item
    if media == "audio" and isinstance(value, dict) and "array" in value:
        return decode_audio_array(value, where, limits)
    if not isinstance(value, str):
        shape = "base64 string, or an {\"array\", \"sampling_rate\"} object" if media == "audio" else "base64 string"
        raise RequestError(f"{where}: {task.name} takes {media}s, each as a {shape} (or uploaded as a file); "
                           f"got a JSON {json_type(value)}.")
    return decode_media(media, decode_base64(value, media, where), where, limits)


def decode_base64(text: str, media: str, where: str) -> bytes:
    if URL.match(text.strip()) and not DATA_URL.match(text.strip()):
        raise RequestError(f"{where} looks like a URL ({text.strip()[:60]!r}); the server fetches nothing: send "
                           f"the {media}'s bytes as base64 or upload the file.")
    payload = DATA_URL.sub("", text.strip(), count=1)
    try:
        # validate=True: a path such as "/data/cat.png" is refused, not read as base64 with characters dropped.
        return base64.b64decode(re.sub(r"\s+", "", payload), validate=True)
    except (binascii.Error, ValueError):
        pass
    if "/" in text or "\\" in text or "." in text[-6:]:
        raise RequestError(f"{where} looks like a file path ({text[:60]!r}); the server never opens its own files: "
                           f"send the {media}'s bytes as base64 or upload the file.")
    raise RequestError(f"{where} is not valid base64 ({text[:40]!r}...): send the {media}'s bytes base64-encoded.")


def decode_media(media: str, raw: bytes, where: str, limits: Limits):
    """Uploaded or base64-decoded bytes -> a PIL image or an ``(waveform, sampling_rate)`` pair."""
    if not raw:
        raise RequestError(f"{where} is empty: no {media} bytes.")
    return decode_image(raw, where, limits) if media == "image" else decode_audio(raw, where, limits)


def decode_image(raw: bytes, where: str, limits: Limits):
    from PIL import Image

    try:  # the header alone, for the size check before decoding the pixels (bytes that are no image: named here)
        width, height = data_utils.image_size({"bytes": raw})
    except Image.DecompressionBombError as error:  # PIL's own limit, far above ours
        raise RequestError(f"{where}: {error}", 413) from None
    check_pixels(width, height, f"{where}: the image", limits)
    return data_utils.open_image_file(io.BytesIO(raw))


def check_pixels(width: int, height: int, what: str, limits: Limits) -> None:
    if width * height > limits.max_image_pixels:
        raise RequestError(f"{what} is {width}x{height} = {width * height:,} pixels, over this server's limit of "
                           f"{limits.max_image_pixels:,}.", 413)


def decode_audio(raw: bytes, where: str, limits: Limits):
    import soundfile

    try:
        info = soundfile.info(io.BytesIO(raw))
    except Exception:  # noqa: BLE001 - load_audio below names the problem as the Python API does
        info = None
    if info is not None:
        check_audio_seconds(info.frames / info.samplerate, where, limits)
    rate = info.samplerate if info is not None else 16_000  # decoded at its own rate; the task resamples
    return load_audio(io.BytesIO(raw), rate), rate


def decode_audio_array(value: dict, where: str, limits: Limits):
    rate = value.get("sampling_rate")
    if isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0:
        raise RequestError(f"{where}: an audio object needs 'sampling_rate', a positive integer; got {rate!r}.")
    samples = value["array"]
    if not isinstance(samples, list) or not all(isinstance(s, (int, float)) and not isinstance(s, bool)
                                                for s in samples):
        raise RequestError(f"{where}: 'array' must be a list of numbers (a mono waveform).")
    check_audio_seconds(len(samples) / rate, where, limits)
    return np.asarray(samples, dtype=np.float32), rate


def check_audio_seconds(seconds: float, where: str, limits: Limits) -> None:
    if seconds > limits.max_audio_seconds:
        raise RequestError(f"{where}: the audio is {seconds:.1f} s long, over this server's limit of "
                           f"{limits.max_audio_seconds:g} s.", 413)


def json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def media_of(task) -> str | None:
    """"image" or "audio" for a task whose inputs are sent as base64 or uploaded files; None for JSON inputs."""
    return None if task.input_type == "text" else task.input_type


def example_input(task) -> str:
    """A short example of ``inputs`` for the task (its ``example_input``), as JSON, for error messages and the docs."""
    example, media = task.example_input, media_of(task)
    return json.dumps(example if example is not None else f"<base64 {media}>" if media else "some text")


# ----------------------------------------------------------------------------------------------- outputs


def to_json(value: Any) -> Any:
    """A predict output as JSON values: PIL images as base64 PNG strings, arrays and tuples as lists."""
    if data_utils.is_image(value):
        return data_utils.png_base64(value)
    if isinstance(value, dict):
        return {str(key): to_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(item) for item in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN or infinity
    return value
