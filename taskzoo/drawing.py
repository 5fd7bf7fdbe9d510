"""Pictures of predictions, because people look at detections and masks rather than read them.

``visualize(image, prediction)`` draws object-detection boxes with their labels and scores, overlays
image-segmentation masks with a legend, or writes image-classification labels with score bars below the image,
and returns the drawing as a PIL image (a PNG file with ``path=``).
Only PIL is imported, and only when called: ``import taskzoo`` stays cheap.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# Distinct, colour-blind-friendly colours (Okabe-Ito, then Tableau), one per label in a picture.
PALETTE = [(230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0),
           (204, 121, 167), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (0, 0, 0)]
MIN_SIDE = 384  # smaller images are enlarged (by a whole factor, pixels kept sharp) so labels stay legible
LABELS_SHOWN = 3  # image classification: the top labels written below the image


def visualize(image: Any, prediction: Any, path: str | os.PathLike | None = None):
    """Draw ``prediction`` over ``image`` and return the drawing.

    Args:
        image: A PIL image, a path or an array.
        prediction: What predict returned for that image: a list of ``{"label", "score", "box"}`` (boxes,
            drawn with "label 0.93" tags), of ``{"label", "score", "mask"}`` (masks overlaid, with a legend
            below) or of ``{"label", "score"}`` (image classification: the first ``LABELS_SHOWN`` labels, in
            the order given, with score bars below the image). ``score`` may be left out (ground truth);
            ``box`` is ``{"xmin", "ymin", "xmax", "ymax"}`` or a list of those four, in the image's pixels.
        path: Where to save the drawing as a PNG too; None: it is only returned.

    Returns:
        The drawing, a PIL RGB image, enlarged where the image is small.

    Raises:
        ValueError: An item has neither a ``box`` nor a ``mask`` (and the items are not labels alone).
    """
    from PIL import Image, ImageDraw

    from taskzoo.data import load_image

    items = [prediction] if isinstance(prediction, Mapping) else list(prediction or [])
    labels_only = bool(items) and all(isinstance(item, Mapping) and "label" in item
                                      and not ({"box", "mask"} & set(item)) for item in items)
    for position, item in enumerate(items):
        if not labels_only and (not isinstance(item, Mapping) or not ({"box", "mask"} & set(item))):
            raise ValueError(f"visualize() draws predictions with a 'box' or a 'mask', or labels alone; item "
                             f"{position} is {item!r:.100}.")
    picture = load_image(image)
    scale = max(1, math.ceil(MIN_SIDE / max(1, min(picture.size))))
    scale = min(scale, max(1, 4096 // max(picture.size)))  # enlarge, but not past 4096 pixels
    original_size = picture.size
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    names = sorted({str(item.get("label", "")) for item in items})
    colour = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}
    font = _font(max(11, min(picture.size) // 28))

    masks = [item for item in items if "mask" in item]
    if masks:
        picture = _overlay(picture, masks, colour, original_size)
    draw = ImageDraw.Draw(picture)
    line = max(2, min(picture.size) // 160)
    for item in items:
        if "box" not in item:
            continue
        xmin, ymin, xmax, ymax = (v * scale for v in _corners(item["box"]))
        fill = colour[str(item.get("label", ""))]
        draw.rectangle((xmin, ymin, xmax, ymax), outline=fill, width=line)
        _tag(draw, (xmin, ymin), _caption(item), fill, font, picture.size)
    if masks:
        picture = _legend(picture, masks, colour, font)
    if labels_only:
        picture = _label_bars(picture, items[:LABELS_SHOWN], font)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        picture.save(path, format="PNG")
    return picture


def side_by_side(pictures: list, gap: int = 8):
    """PIL images in one row on white, ``gap`` pixels apart and aligned at the top (several drawings, one PNG)."""
    from PIL import Image

    if not pictures:
        raise ValueError("side_by_side() needs at least one picture.")
    row = Image.new("RGB", (sum(p.width for p in pictures) + gap * (len(pictures) - 1),
                            max(p.height for p in pictures)), (255, 255, 255))
    x = 0
    for picture in pictures:
        row.paste(picture.convert("RGB"), (x, 0))
        x += picture.width + gap
    return row


def _corners(box) -> tuple[float, float, float, float]:
    if isinstance(box, Mapping):
        return tuple(float(box[key]) for key in ("xmin", "ymin", "xmax", "ymax"))
    if isinstance(box, Sequence) and len(box) == 4:
        return tuple(float(v) for v in box)
    raise ValueError(f"A box is {{'xmin', 'ymin', 'xmax', 'ymax'}} or [xmin, ymin, xmax, ymax]; got {box!r:.100}.")


def _caption(item: Mapping) -> str:
    label = str(item.get("label", ""))
    return f"{label} {item['score']:.2f}" if item.get("score") is not None else label


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: scalable
    except (TypeError, OSError):
        return ImageFont.load_default()


def _ink(fill) -> tuple[int, int, int]:
    """Black or white text, whichever reads better on ``fill``."""
    return (0, 0, 0) if 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2] > 140 else (255, 255, 255)


def _tag(draw, corner, text: str, fill, font, size) -> None:
    """A filled label above the box's top-left corner, or just inside it at the top of the image."""
    if not text:
        return
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    width, height = right - left + 6, bottom - top + 4
    x = min(max(0, corner[0]), max(0, size[0] - width))
    y = corner[1] - height if corner[1] - height >= 0 else max(0, corner[1])
    draw.rectangle((x, y, x + width, y + height), fill=fill)
    draw.text((x + 3 - left, y + 2 - top), text, fill=_ink(fill), font=font)


def _overlay(picture, masks: list[Mapping], colour: dict, original_size) -> Any:
    """Blend each mask's colour over its pixels (half opacity), in list order."""
    import numpy as np
    from PIL import Image

    canvas = np.asarray(picture, dtype=np.float32).copy()
    for item in masks:
        mask = item["mask"]
        if not isinstance(mask, Image.Image):  # an array: bool, 0/1 or 0/255
            mask = Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255)
        if mask.size != original_size:
            raise ValueError(f"A mask is {mask.size[0]}x{mask.size[1]} but the image is "
                             f"{original_size[0]}x{original_size[1]}.")
        inside = np.asarray(mask.convert("L").resize(picture.size, Image.NEAREST)) > 127
        canvas[inside] = 0.5 * canvas[inside] + 0.5 * np.asarray(colour[str(item.get("label", ""))], np.float32)
    return Image.fromarray(canvas.round().astype(np.uint8))


def _legend(picture, masks: list[Mapping], colour: dict, font) -> Any:
    """A strip below the picture: a swatch and "label score" per mask, wrapped into rows."""
    from PIL import Image, ImageDraw

    measure = ImageDraw.Draw(picture)
    entries = [(colour[str(item.get("label", ""))], _caption(item)) for item in masks]
    height = max(measure.textbbox((0, 0), "Ag", font=font)[3], 10) + 8
    rows, x = [[]], 6
    for fill, text in entries:
        width = height + measure.textlength(text, font=font) + 16
        if rows[-1] and x + width > picture.width:
            rows, x = rows + [[]], 6
        rows[-1].append((x, fill, text))
        x += width
    strip = Image.new("RGB", (picture.width, picture.height + len(rows) * height + 6), (255, 255, 255))
    strip.paste(picture, (0, 0))
    draw = ImageDraw.Draw(strip)
    for number, row in enumerate(rows):
        y = picture.height + 3 + number * height
        for x, fill, text in row:
            draw.rectangle((x, y + 2, x + height - 6, y + height - 4), fill=fill, outline=(0, 0, 0))
            draw.text((x + height, y + 1), text, fill=(0, 0, 0), font=font)
    return strip


def _label_bars(picture, items: list[Mapping], font) -> Any:
    """Rows below the picture, one per label: a bar as long as its score and "label 0.93" (the first label,
    predict's top one, in the first colour of the palette, the others grey)."""
    from PIL import Image, ImageDraw

    height = max(ImageDraw.Draw(picture).textbbox((0, 0), "Ag", font=font)[3], 10) + 8
    strip = Image.new("RGB", (picture.width, picture.height + len(items) * height + 6), (255, 255, 255))
    strip.paste(picture, (0, 0))
    draw = ImageDraw.Draw(strip)
    for number, item in enumerate(items):
        y = picture.height + 3 + number * height
        score = item.get("score")
        if score is not None:
            width = round(min(max(float(score), 0.0), 1.0) * (picture.width - 12))
            draw.rectangle((6, y + 2, 6 + width, y + height - 3), fill=PALETTE[0] if number == 0 else (200, 200, 200))
        draw.text((10, y + 2), _caption(item), fill=(0, 0, 0), font=font)
    return strip
