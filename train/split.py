"""The held-out validation images of a run: a fixed, seeded slice of the training split.

Pure numpy (no Keras, no TensorFlow), so export finds the images a run held out without
loading what trains: ``train.fit`` splits with it, and so does ``export.calibrate``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from runtime.errors import CifarEdgeError

if TYPE_CHECKING:
    from .data import ImageDataset


@dataclass(frozen=True)
class Split:
    x_train: np.ndarray  # (N, S, S, 3) uint8 RGB, S the input size
    y_train: np.ndarray  # (N,) int64
    x_val: np.ndarray  # (M, S, S, 3) uint8 RGB: held out of train, or the test split
    y_val: np.ndarray  # (M,) int64


def auto_val_images(n_train: int) -> int:
    """Held-out images when --val-images is not given: 10% of the training split, at most
    2,000 (enough to rank epochs to about ±1 point), at least one image."""
    return max(1, min(2000, n_train // 10))


def split_validation(data: ImageDataset, val_images: int | None, seed: int) -> Split:
    """A fixed, seeded held-out slice of train (``val_images``; None: ``auto_val_images``), or
    the test split when ``val_images`` is 0."""
    n = len(data.x_train)
    if val_images == 0:
        return Split(data.x_train, data.y_train, data.x_test, data.y_test)
    if val_images is None:
        val_images = auto_val_images(n)
    if val_images >= n:
        raise CifarEdgeError(f"--val-images {val_images} leaves no training images (the training split "
                             f"has {n:,}); use fewer, e.g. --val-images {auto_val_images(n)}, "
                             "or 0 to validate on the test split")
    order = np.random.default_rng([seed, 1]).permutation(n)
    val, train = order[:val_images], np.sort(order[val_images:])
    return Split(data.x_train[train], data.y_train[train], data.x_train[val], data.y_train[val])
