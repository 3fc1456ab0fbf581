"""Augmentation for the training pipeline (not in the model, so the model exports cleanly):
random horizontal flips and pad-and-crop translation, vectorized over a whole epoch in numpy.
"""

from __future__ import annotations

import numpy as np


def augment_epoch(images: np.ndarray, rng: np.random.Generator, translate: int = 2,
                  flip: bool = True) -> np.ndarray:
    """images: (N, H, W, 3) uint8 → a new augmented (N, H, W, 3) uint8 array."""
    n, h, w, _ = images.shape
    out = images.copy()
    if flip:
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
    return out

