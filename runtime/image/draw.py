"""Predictions drawn onto images: the one wording of a label and the overlay's colours (used by
the OpenCV overlay in ``video`` and the Pillow one in ``web.stream`` too), and, with Pillow,
annotated copies and a contact sheet."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from runtime.model.classifier import UNCERTAIN, Prediction

MIN_SIDE = 256  # px: CIFAR images are 32x32; upscale small ones so the label is readable
TILE = 128  # px: contact-sheet thumbnail size

# Overlay colours, RGB (OpenCV takes them reversed, as BGR)
TEXT_RGB = (255, 255, 255)  # a label
UNCERTAIN_RGB = (255, 200, 0)  # amber: a label below --min-confidence
STATS_RGB = (200, 200, 200)  # the timing line under a frame's label
BOX_RGB = (0, 255, 0)  # the classified region of a frame
BAND_RGB = (0, 0, 0)  # the band behind each line of text


@lru_cache(maxsize=8)
def font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # a scalable font on Pillow >= 10.1
    except TypeError:
        return ImageFont.load_default()


def label_text(label: str, confidence: float, uncertain: bool) -> str:
    """The label as every overlay words it: "cat 87%", or "uncertain (cat 40%)" when the
    top probability is below --min-confidence."""
    shown = f"{label} {confidence:.0%}"
    return f"{UNCERTAIN} ({shown})" if uncertain else shown


def caption(prediction: Prediction | None, min_confidence: float = 0.0, error: str | None = None) -> str:
    if prediction is None:
        return "error" if error is None else f"error: {error}"
    return label_text(prediction.label, prediction.confidence, prediction.confidence < min_confidence)


def _banner(draw: ImageDraw.ImageDraw, text: str, box: tuple[int, int, int, int], size: int,
            color=TEXT_RGB) -> None:
    """White text on a black band filling ``box`` (left, top, right, bottom)."""
    draw.rectangle(box, fill=BAND_RGB)
    draw.text((box[0] + size // 4, box[1] + size // 6), text, fill=color, font=font(size))


def annotate_image(image_rgb: Image.Image, prediction: Prediction | None, *,
                   min_confidence: float = 0.0) -> Image.Image:
    """A copy of ``image_rgb`` (upscaled to at least MIN_SIDE) with the label and confidence
    in a band along the top."""
    image = image_rgb.convert("RGB")
    short = min(image.size)
    if short < MIN_SIDE:
        scale = MIN_SIDE / short
        image = image.resize((round(image.width * scale), round(image.height * scale)),
                             Image.Resampling.NEAREST if short <= 64 else Image.Resampling.BICUBIC)
    else:
        image = image.copy()
    size = max(14, min(image.size) // 14)
    _banner(ImageDraw.Draw(image), caption(prediction, min_confidence), (0, 0, image.width, int(size * 1.5)),
            size)
    return image


def contact_sheet(items: Sequence[tuple[str, Image.Image | None, Prediction | None]], *,
                  min_confidence: float = 0.0, columns: int | None = None) -> Image.Image:
    """One image: a TILE-sized thumbnail per (name, image, prediction), with two caption lines
    (file name, label). A missing image (a failed input) becomes a grey tile."""
    n = max(1, len(items))
    columns = columns or min(8, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / columns)
    text = 12
    cell_h = TILE + 2 * (text + 4)
    sheet = Image.new("RGB", (columns * TILE, rows * cell_h), (32, 32, 32))
    draw = ImageDraw.Draw(sheet)
    for i, (name, image, prediction) in enumerate(items):
        x, y = (i % columns) * TILE, (i // columns) * cell_h
        if image is not None:
            thumb = image.convert("RGB")
            if max(thumb.size) <= TILE // 2:  # tiny (CIFAR) images: blow up, keep pixels crisp
                s = TILE / max(thumb.size)
                thumb = thumb.resize((round(thumb.width * s), round(thumb.height * s)),
                                     Image.Resampling.NEAREST)
            thumb.thumbnail((TILE, TILE), Image.Resampling.BICUBIC)
            sheet.paste(thumb, (x + (TILE - thumb.width) // 2, y + (TILE - thumb.height) // 2))
        else:
            draw.rectangle((x + 1, y + 1, x + TILE - 2, y + TILE - 2), fill=(90, 90, 90))
        label = caption(prediction, min_confidence) if image is not None or prediction else "error"
        color = (255, 120, 120) if prediction is None else TEXT_RGB
        draw.text((x + 3, y + TILE + 2), _fit(name, TILE - 6, text), fill=(190, 190, 190), font=font(text))
        draw.text((x + 3, y + TILE + text + 6), _fit(label, TILE - 6, text), fill=color, font=font(text))
    return sheet


def _fit(text: str, width: int, size: int) -> str:
    """Shorten ``text`` from the left until it fits ``width`` pixels."""
    f = font(size)
    if f.getlength(text) <= width:
        return text
    while text and f.getlength("…" + text) > width:
        text = text[1:]
    return "…" + text
