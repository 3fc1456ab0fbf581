"""Decoding and resizing: the one preprocessing function shared by the runtime, evaluation,
calibration and parity checks.

Pixel scaling and normalization are *not* here: they are layers inside the model graph, so
this module only turns any image into raw RGB pixels of the size the model expects.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps

from .contract import InputContract
from .errors import ImageError

# Refuse images whose pixel count would decompress into gigabytes (a "decompression bomb").
# 50 Mpx is above any camera a Pi or Jetson user will meet, far below a bomb.
MAX_PIXELS = 50_000_000

# The file suffixes (lower case) taken as images wherever a folder is searched: runtime,
# calibration and training data alike. All are formats Pillow reads.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm", ".pbm")

ImageSource = Union[str, os.PathLike, Image.Image]

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode (L, P, RGBA, CMYK, I;16, F, ...) to 8-bit RGB."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / 32-bit greyscale: scale the full range down to 8 bits instead of clipping.
        arr = np.asarray(image, dtype=np.float64)
        hi = 65535.0 if image.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Composite transparency onto white, as a viewer would show it.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(source: ImageSource, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Open ``source`` (a path or a PIL image) as an upright 8-bit RGB PIL image.

    EXIF orientation is applied. With ``draft_size``, JPEGs are decoded at a reduced scale
    no smaller than that size (Pillow's draft mode), which is much faster on a Pi.
    Raises ImageError naming the file for anything unreadable.
    """
    if isinstance(source, Image.Image):
        image = source
        name = "<PIL image>"
    else:
        name = os.fspath(source)
        path = Path(name)
        if not path.exists():
            raise ImageError(f"{name}: no such file")
        if path.is_dir():
            raise ImageError(f"{name}: is a directory, not an image")
        if path.stat().st_size == 0:
            raise ImageError(f"{name}: empty file")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(path)
                w, h = image.size
                if w * h > MAX_PIXELS:
                    raise ImageError(
                        f"{name}: {w}x{h} pixels is over the {MAX_PIXELS:,} pixel limit "
                        "(possible decompression bomb)"
                    )
                if draft_size is not None and image.format == "JPEG":
                    image.draft("RGB", draft_size)
                image.load()
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError(f"{name}: refused as a possible decompression bomb ({exc})") from None
        except Image.UnidentifiedImageError:
            raise ImageError(f"{name}: not an image Pillow can read") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"{name}: corrupt or truncated image ({exc})") from None
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # broken EXIF must not make an otherwise good image unusable
        pass
    return _to_rgb(image)


def resize_to_input(image_rgb: Image.Image, contract: InputContract) -> Image.Image:
    """Apply the contract's resize policy: centre-crop to the aspect, then resize."""
    target_w, target_h = contract.width, contract.height
    w, h = image_rgb.size
    if contract.resize == "center-crop":
        # Largest centred box with the target's aspect ratio.
        target_aspect = target_w / target_h
        if w / h > target_aspect:
            crop_w, crop_h = round(h * target_aspect), h
        else:
            crop_w, crop_h = w, round(w / target_aspect)
        left, top = (w - crop_w) // 2, (h - crop_h) // 2
        box = (left, top, left + crop_w, top + crop_h)
    elif contract.resize == "stretch":
        box = (0, 0, w, h)
    else:
        raise ImageError(f"unknown resize policy {contract.resize!r} in the model metadata")
    if (w, h) == (target_w, target_h) and box == (0, 0, w, h):
        return image_rgb
    # Pillow's resize is anti-aliased when shrinking (its filters widen with the scale).
    return image_rgb.resize(
        (target_w, target_h), _RESAMPLE.get(contract.resample, Image.Resampling.BICUBIC), box=box
    )


def prepare(source: ImageSource, contract: InputContract | None = None) -> np.ndarray:
    """Any image → (H, W, 3) uint8 RGB at the model's input size. The one preprocessing path."""
    contract = contract or InputContract()
    # Draft to twice the target so the final anti-aliased resize still has detail to work with.
    image = load_image(source, draft_size=(contract.width * 2, contract.height * 2))
    return np.asarray(resize_to_input(image, contract), dtype=np.uint8)


def prepare_array(image_rgb: np.ndarray, contract: InputContract | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB array → (h, w, 3) uint8 RGB at the model's input size."""
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ImageError(f"expected an (H, W, 3) RGB array, got shape {image_rgb.shape}")
    if image_rgb.dtype != np.uint8:
        image_rgb = np.clip(image_rgb, 0, 255).astype(np.uint8)
    # An array has no EXIF and is already RGB: straight to the resize (the per-frame path).
    image = Image.fromarray(np.ascontiguousarray(image_rgb), mode="RGB")
    return np.asarray(resize_to_input(image, contract or InputContract()), dtype=np.uint8)


def to_batch(images_hwc: list[np.ndarray] | np.ndarray, contract: InputContract | None = None) -> np.ndarray:
    """Stack prepared images into the model's input tensor: (N, H, W, 3) float32, raw 0-255."""
    contract = contract or InputContract()
    batch = np.asarray(images_hwc, dtype=np.float32)
    if batch.ndim == 3:
        batch = batch[None]
    if contract.layout == "NCHW":
        batch = batch.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(batch)
