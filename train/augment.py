"""Augmentation for the training pipeline (not in the model, so the model exports cleanly):
random horizontal flips, pad-and-crop translation and cutout, vectorized over a whole epoch in numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .config import TrainConfig


# Cutout paints this colour: the CIFAR-10 mean, i.e. zero once the model has normalized it.
CUTOUT_FILL = (125, 123, 114)


def augment_epoch(images: np.ndarray, rng: np.random.Generator, translate: int = 2,
                  flip: bool | np.ndarray = True, cutout: int = 0) -> np.ndarray:
    """images: (N, H, W, 3) uint8 → a new augmented (N, H, W, 3) uint8 array.

    flip: True mirrors a random half of the images; a boolean array of N says which ones
    (``alternating_flips``); False mirrors none.
    cutout > 0 paints one ``cutout``×``cutout`` square per image, placed uniformly at random
    inside the image, with ``CUTOUT_FILL``.
    """
    n, h, w, _ = images.shape
    out = images.copy()
    if isinstance(flip, np.ndarray):
        if flip.shape != (n,):
            raise ValueError(f"flip mask of shape {flip.shape} for {n} images")
        out[flip] = out[flip, :, ::-1]
    elif flip:
        flips = rng.random(n) < 0.5
        out[flips] = out[flips, :, ::-1]
    if translate > 0:
        t = translate
        padded = np.pad(out, ((0, 0), (t, t), (t, t), (0, 0)), mode="reflect")
        dy = rng.integers(0, 2 * t + 1, n)
        dx = rng.integers(0, 2 * t + 1, n)
        # One vectorized crop per (dy, dx) offset instead of a Python loop per image.
        for oy in range(2 * t + 1):
            for ox in range(2 * t + 1):
                sel = np.flatnonzero((dy == oy) & (dx == ox))
                if len(sel):
                    out[sel] = padded[sel, oy:oy + h, ox:ox + w]
    if cutout > 0:
        if cutout > min(h, w):
            raise ValueError(f"cutout {cutout} is larger than the {h}x{w} images")
        y0 = rng.integers(0, h - cutout + 1, n)[:, None, None]
        x0 = rng.integers(0, w - cutout + 1, n)[:, None, None]
        rows = np.arange(h)[None, :, None]
        cols = np.arange(w)[None, None, :]
        mask = (rows >= y0) & (rows < y0 + cutout) & (cols >= x0) & (cols < x0 + cutout)
        out[mask] = np.array(CUTOUT_FILL, dtype=out.dtype)
    return out


def augmented_epoch(images: np.ndarray, labels: np.ndarray, config: "TrainConfig",
                    epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Epoch ``epoch``'s (0-based) training data as ``config`` augments it: (images, labels)
    shuffled, then flipped, translated and cut out. It depends only on (``config.seed``,
    ``epoch``), so a resumed run, or another trainer, sees the same batches.
    images: (N, H, W, 3) uint8; labels: (N,) int."""
    rng = np.random.default_rng([config.seed, epoch])
    order = rng.permutation(len(images))
    flip = config.flip
    if flip and config.alternate_flip:
        flip = alternating_flips(len(images), config.seed, epoch)[order]
    return augment_epoch(images[order], rng, config.translate, flip, config.cutout), labels[order]


def alternating_flips(n_images: int, seed: int, epoch: int) -> np.ndarray:
    """airbench's flip: a fixed random half of the ``n_images`` (by index, from ``seed``) is
    mirrored in even epochs and the other half in odd ones, so every image is seen both ways
    in turn. Returns which images to mirror in ``epoch`` (0-based), indexed like the data."""
    fixed = np.random.default_rng([seed, 2]).random(n_images) < 0.5
    return fixed if epoch % 2 == 0 else ~fixed
