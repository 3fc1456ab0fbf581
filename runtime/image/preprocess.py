"""Decoding and resizing: the one preprocessing function shared by the runtime, evaluation,
calibration and parity checks.

Pixel scaling and normalization are *not* here: they are layers inside the model graph, so
this module only turns any image into raw RGB pixels of the size the model expects.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps

from runtime.errors import ImageError
from runtime.model.contract import InputContract

# Refuse images whose pixel count would decompress into gigabytes (a "decompression bomb").
# 50 Mpx is above any camera a Pi or Jetson user will meet, far below a bomb.
MAX_PIXELS = 50_000_000

# Bytes per pixel Pillow keeps for a decoded image of each mode (RGB is stored as 4 bytes),
# and the most that converting it to RGB (``_to_rgb``) holds besides: an upright RGBA image
# keeps itself, a white background and their composite; 16-bit and float greyscale pass
# through float64 arrays. Modes not named store 4 bytes and convert with one RGB copy.
_STORED_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2}
_CONVERT_BYTES = {"RGB": 0, "RGBA": 8, "LA": 12, "PA": 12, "I;16": 21, "I;16B": 21, "I;16L": 21,
                  "I": 21, "F": 21}

# The file suffixes (lower case) taken as images wherever a folder is searched: runtime,
# calibration and training data alike. All are formats Pillow reads.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm", ".pbm")

ImageSource = Union[str, os.PathLike, Image.Image]

# Before the final anti-aliased resize, a large image is box-reduced by an integer factor that
# leaves it at least this many times the target size (Pillow's reducing_gap): one cheap pass in
# C instead of a filter hundreds of pixels wide. Pillow calls 3.0 indistinguishable from the
# full resize in most cases.
REDUCING_GAP = 3.0

# Arrays (camera frames) with more than this many rows per output row are read every n-th row
# (640x480 every 2nd, 1920x1080 every 4th): Pillow's cost is per pixel read, and 7 rows per
# output row still gave the old full resize's label on 99% of CIFAR-10 frames, as often as a
# second noise draw of the same frame does (scripts/bench_frame_path.py, docs/running.md).
ROWS_PER_OUTPUT_ROW = 7

# Pillow filter for each contract "resample" name, and how far it reaches on each side of an
# output pixel, in output pixels (so the source pixels a box's resize reads can be cut out).
_RESAMPLE = {
    "nearest": (Image.Resampling.NEAREST, 0.0),
    "box": (Image.Resampling.BOX, 0.5),
    "bilinear": (Image.Resampling.BILINEAR, 1.0),
    "bicubic": (Image.Resampling.BICUBIC, 2.0),
    "lanczos": (Image.Resampling.LANCZOS, 3.0),
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
        # Composite transparency onto white, as a viewer would show it (RGBA as it is: a
        # copy would cost 4 bytes a pixel more, for the same pixels).
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        composite = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        return composite.convert("RGB")
    return image.convert("RGB")


def decode_bytes(mode: str, size: tuple[int, int], info: dict | None = None, upright: bool = True) -> int:
    """The most memory, in bytes, that decoding an image of ``mode`` and ``size`` (as its header
    says, after any draft) and converting it to upright RGB holds at once: the decoded pixels,
    then either the conversion's or, for an image its EXIF turns (``upright=False``), the
    turned copy's. An estimate from the header, so that a file is refused before it is decoded."""
    stored = _STORED_BYTES.get(mode, 4)
    convert = 12 if mode == "P" and "transparency" in (info or {}) else _CONVERT_BYTES.get(mode, 4)
    return size[0] * size[1] * (stored + max(convert, 0 if upright else stored))


def load_image(source: ImageSource | bytes, draft_size: tuple[int, int] | None = None,
               name: str | None = None, max_bytes: int | None = None) -> Image.Image:
    """Open ``source`` (a path, a PIL image, or the bytes of an image file, e.g. an upload,
    called ``name`` in messages) as an upright 8-bit RGB PIL image.

    EXIF orientation is applied. With ``draft_size``, JPEGs are decoded at a reduced scale
    no smaller than that size (Pillow's draft mode), which is much faster on a Pi. With
    ``max_bytes``, a file whose decoding would hold more memory than that (``decode_bytes``,
    from its header, after the draft) is refused before it is decoded.
    Raises ImageError naming the file for anything unreadable; its ``reason`` says which
    check failed ("missing", "empty", "too_large", "not_image", "corrupt").
    """
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, (bytes, bytearray, memoryview)):
        image = _decode(io.BytesIO(source), name or "<image bytes>", len(source), draft_size, max_bytes)
    else:
        name = os.fspath(source)
        path = Path(name)
        if not path.exists():
            raise ImageError(f"{name}: no such file", reason="missing")
        if path.is_dir():
            raise ImageError(f"{name}: is a directory, not an image", reason="missing")
        image = _decode(path, name, path.stat().st_size, draft_size, max_bytes)
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # broken EXIF must not make an otherwise good image unusable
        pass
    return _to_rgb(image)


def _decode(file, name: str, size: int, draft_size: tuple[int, int] | None,
            max_bytes: int | None) -> Image.Image:
    """Decode one image file (a path or a binary file object): the size limits, draft mode,
    the memory budget."""
    if size == 0:
        raise ImageError(f"{name}: empty file", reason="empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(file)
            w, h = image.size
            if w * h > MAX_PIXELS:
                raise ImageError(f"{name}: {w}x{h} pixels is over the {MAX_PIXELS:,} pixel limit "
                                 "(possible decompression bomb)", reason="too_large")
            if draft_size is not None and image.format == "JPEG":
                image.draft("RGB", draft_size)  # decodes at 1/2, 1/4 or 1/8 scale: size and mode change
            if max_bytes is not None:
                _check_budget(image, name, max_bytes)
            image.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{name}: refused as a possible decompression bomb ({exc})", reason="too_large") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{name}: not an image Pillow can read", reason="not_image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: corrupt or truncated image ({exc})", reason="corrupt") from None
    return image


def _check_budget(image: Image.Image, name: str, max_bytes: int) -> None:
    """Refuse, from the header, an image whose decoding would hold more than ``max_bytes``."""
    if image.format == "PNG" and "exif" not in image.info:
        orientation = 0  # Pillow would decode the whole PNG to look for EXIF after its pixels: may turn
    else:
        try:
            orientation = image.getexif().get(0x0112, 1)
        except Exception:  # a broken EXIF block: load_image ignores it, so no turn
            orientation = 1
    need = decode_bytes(image.mode, image.size, image.info, upright=orientation == 1)
    if need > max_bytes:
        w, h = image.size
        raise ImageError(f"{name}: decoding {w}x{h} {image.mode} takes about {need / 2**20:,.0f} MB of "
                         f"memory, over this server's {max_bytes / 2**20:,.0f} MB for one image (send it "
                         "smaller, or as a JPEG)", reason="too_large")


def _resample(contract: InputContract) -> tuple[Image.Resampling, float]:
    """The contract's Pillow filter and its reach in output pixels (bicubic if unknown)."""
    return _RESAMPLE.get(contract.resample, _RESAMPLE["bicubic"])


def crop_box(width: int, height: int, contract: InputContract) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) box of a width x height image that the contract's resize
    policy maps onto the model's input: the largest centred box of its aspect, or everything."""
    if contract.resize == "stretch":
        return (0, 0, width, height)
    if contract.resize != "center-crop":
        raise ImageError(f"unknown resize policy {contract.resize!r} in the model metadata")
    target_aspect = contract.width / contract.height
    if width / height > target_aspect:
        crop_w, crop_h = max(1, round(height * target_aspect)), height
    else:
        crop_w, crop_h = width, max(1, round(width / target_aspect))
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return (left, top, left + crop_w, top + crop_h)


def _resize_box(image: Image.Image, box: tuple[float, float, float, float],
                contract: InputContract) -> Image.Image:
    """Resize ``box`` of ``image`` to the model's size; an image already that size, box
    whole, comes back as it is. Anti-aliased (the filter widens with the scale), after an
    integer box reduction of large images (REDUCING_GAP)."""
    size = (contract.width, contract.height)
    if image.size == size and tuple(box) == (0, 0, *size):
        return image
    return image.resize(size, _resample(contract)[0], box=box, reducing_gap=REDUCING_GAP)


def resize_to_input(image_rgb: Image.Image, contract: InputContract) -> Image.Image:
    """Apply the contract's resize policy: resize its box (centre-crop or whole) to the model's size."""
    return _resize_box(image_rgb, crop_box(*image_rgb.size, contract), contract)


def prepare(source: ImageSource, contract: InputContract | None = None) -> np.ndarray:
    """Any image → (H, W, 3) uint8 RGB at the model's input size. The one preprocessing path."""
    contract = contract or InputContract()
    # Draft to twice the target so the final anti-aliased resize still has detail to work with.
    image = load_image(source, draft_size=(contract.width * 2, contract.height * 2))
    return np.asarray(resize_to_input(image, contract), dtype=np.uint8)


def _array_to_image(image_hwc: np.ndarray, box: tuple[int, int, int, int],
                    contract: InputContract) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """The pixels of an (H, W, 3) uint8 array that resizing ``box`` reads, as a Pillow image,
    and ``box`` in that image's coordinates.

    Those pixels are the box and the filter's reach around it, from a tall box every n-th row
    only (ROWS_PER_OUTPUT_ROW). Pillow's raw decoder reads them straight out of the array's
    memory with its row stride: one pass over that part, no copy of the whole frame. Channels
    are taken as they are (Pillow calls them RGB whatever they hold).
    """
    height, width = image_hwc.shape[:2]
    left, top, right, bottom = box
    reach = _resample(contract)[1]
    # In source px: the filter widens with the scale when shrinking, never below its own width.
    reach_x = math.ceil(reach * max(1.0, (right - left) / contract.width))
    reach_y = math.ceil(reach * max(1.0, (bottom - top) / contract.height))
    x0, y0 = max(0, left - reach_x), max(0, top - reach_y)
    x1, y1 = min(width, right + reach_x), min(height, bottom + reach_y)
    step = max(1, (bottom - top) // (contract.height * ROWS_PER_OUTPUT_ROW))
    region = image_hwc[y0:y1:step, x0:x1]  # a view: (h, w, 3) uint8
    if region.strides[1:] != (3, 1) or region.strides[0] <= 0:
        region = np.ascontiguousarray(region)  # a mirrored or channel-reversed view: copy it
    h, w = region.shape[:2]
    row_bytes = region.strides[0]
    # The decoder wants one flat buffer: the bytes from the region's first pixel to its last.
    flat = np.lib.stride_tricks.as_strided(region, shape=((h - 1) * row_bytes + w * 3,), strides=(1,))
    image = Image.frombuffer("RGB", (w, h), flat, "raw", "RGB", row_bytes, 1)
    return image, (left - x0, (top - y0) / step, right - x0, (bottom - y0) / step)


def prepare_array(image_hwc: np.ndarray, contract: InputContract | None = None,
                  color_order: str = "RGB") -> np.ndarray:
    """(H, W, 3) array in ``color_order`` ("RGB" or "BGR") → (h, w, 3) uint8 RGB at the
    model's input size. An image already at that size comes back with its pixels unchanged.
    """
    contract = contract or InputContract()
    if color_order not in ("RGB", "BGR"):
        raise ImageError(f"color_order must be 'RGB' or 'BGR', got {color_order!r}")
    what = "BGR frame" if color_order == "BGR" else "RGB array"
    if image_hwc.ndim != 3 or image_hwc.shape[2] != 3:
        raise ImageError(f"expected an (H, W, 3) {what}, got shape {image_hwc.shape}")
    if image_hwc.shape[0] == 0 or image_hwc.shape[1] == 0:
        raise ImageError(f"empty {what}: shape {image_hwc.shape}")
    if image_hwc.dtype != np.uint8:
        image_hwc = np.clip(image_hwc, 0, 255).astype(np.uint8)
    if image_hwc.shape[:2] == (contract.height, contract.width):  # already the model's size:
        out = image_hwc[:, :, ::-1] if color_order == "BGR" else image_hwc  # no resize, no Pillow
        return np.ascontiguousarray(out)
    # An array has no EXIF: the resize only. Resizing works channel by channel, so a BGR
    # frame is resized as it is and only the (h, w, 3) result has its channels swapped.
    image, box = _array_to_image(image_hwc, crop_box(image_hwc.shape[1], image_hwc.shape[0], contract),
                                 contract)
    out = np.asarray(_resize_box(image, box, contract), dtype=np.uint8)  # (h, w, 3) in color_order
    return np.ascontiguousarray(out[:, :, ::-1]) if color_order == "BGR" else out  # the one BGR->RGB


def to_batch(images_hwc: list[np.ndarray] | np.ndarray, contract: InputContract | None = None) -> np.ndarray:
    """Stack prepared images into the model's input tensor: (N, H, W, 3) float32, raw 0-255."""
    contract = contract or InputContract()
    batch = np.asarray(images_hwc, dtype=np.float32)
    if batch.ndim == 3:
        batch = batch[None]
    if contract.layout == "NCHW":
        batch = batch.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(batch)
