"""airbench's test-time augmentation: score a model on weighted views of each test image.

Level 0 is the image alone; level 1 adds its mirror; level 2 adds the pair moved one pixel
down-right and the pair moved up-left, with reflect padding at the border
(KellerJordan/cifar10-airbench, legacy/airbench94.py). scripts/reference_run.py uses it to set
its figures beside the published ones. NumPy only: ``model`` is anything with a Keras-style
``predict``.
"""

from __future__ import annotations

import numpy as np


def tta_views(images: np.ndarray, level: int) -> list[tuple[np.ndarray, float]]:
    """airbench's test-time views of (N, 32, 32, 3) images with their weights: 0 the image;
    1 it and its mirror, half each; 2 the unshifted pair a quarter each, and the pairs with the content
    moved one pixel down-right and up-left (reflect padding) an eighth each."""
    if level == 0:
        return [(images, 1.0)]
    pairs = [images]
    if level >= 2:
        padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
        pairs += [padded[:, :32, :32], padded[:, 2:, 2:]]
    weights = [0.5] if level == 1 else [0.25, 0.125, 0.125]
    return [(view, weight) for image, weight in zip(pairs, weights) for view in (image, image[:, :, ::-1])]


def tta_accuracy(model, images: np.ndarray, labels: np.ndarray, level: int) -> float:
    """Accuracy over the weighted views. Log-probabilities are averaged, which ranks classes as
    averaging logits does (the per-view normalizer is the same for every class)."""
    score = 0.0
    for view, weight in tta_views(images, level):
        probs = model.predict(np.ascontiguousarray(view, np.float32), batch_size=1000, verbose=0)
        score = score + weight * np.log(np.clip(probs, 1e-12, 1.0))
    return float(np.mean(np.argmax(score, 1) == labels))
