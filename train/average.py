"""The tail average: a run's model as the mean of its last epochs' weights.

Late in a run the weights still move a lot from one epoch to the next at the recipe's final
learning rate (0.07 of the peak): validation accuracy swings by points between neighbouring
epochs (86.2, 90.1, 87.7, 88.7, 90.6% over the shipped model's last five). The mean of the
last epochs' weights sits between those swings. BatchNorm's moving statistics are averaged
with the rest, as airbench's lookahead averages them: measuring them again on training images
(stochastic weight averaging's step) cost the shipped model 0.4-0.8 point on the test split
(docs/training.md, "The tail average"), so ``reestimate_batchnorm`` is there to measure, not used.

The weights come from the run folder's ``snapshots/`` (``TrainConfig.snapshots``), written
atomically after each of the last epochs, so a resumed run averages the same epochs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.errors import DataError

from .runfolder import SNAPSHOTS

BN_BATCH = 500  # images per batch when BatchNorm statistics are measured again


def snapshot_path(run_dir: Path, epoch: int) -> Path:
    return Path(run_dir) / SNAPSHOTS / f"epoch-{epoch:03d}.weights.h5"


def snapshot_files(run_dir: Path) -> list[Path]:
    """The run's snapshots, oldest first; a DataError when it kept none."""
    files = sorted((Path(run_dir) / SNAPSHOTS).glob("epoch-*.weights.h5"))
    if not files:
        raise DataError(f"{run_dir}: no {SNAPSHOTS}/epoch-*.weights.h5 (a run keeps them with snapshots=N)")
    return files


def average_weights(model, files: list[Path]) -> list[np.ndarray]:
    """The element-wise mean of the weights saved in ``files`` (each of ``model``'s architecture);
    ``model`` is left holding the last file's weights."""
    total = None
    for path in files:
        model.load_weights(path)
        weights = [np.asarray(w, dtype=np.float64) for w in model.get_weights()]
        total = weights if total is None else [t + w for t, w in zip(total, weights)]
    return [(t / len(files)).astype(np.float32) for t in total]


def reestimate_batchnorm(model, images: np.ndarray, batch_size: int = BN_BATCH) -> None:
    """Replace every BatchNorm layer's moving statistics by their mean over ``images`` (uint8,
    the model's input) in training mode: a cumulative average, the i-th batch weighing 1/i."""
    import keras

    layers = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in layers]
    try:
        for i, start in enumerate(range(0, len(images), batch_size)):
            for layer in layers:
                layer.momentum = i / (i + 1)  # moving = moving * i/(i+1) + batch / (i+1)
            model(images[start:start + batch_size], training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum


def bn_images(x_train: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A seeded sample of ``n`` training images for ``reestimate_batchnorm``."""
    rng = np.random.default_rng([seed, 1])
    return x_train[np.sort(rng.permutation(len(x_train))[:n])]


def average_tail(model, files: list[Path], images: np.ndarray | None) -> None:
    """Set ``model`` (float32) to the mean of the weights in ``files``; then, given training
    ``images``, measure its BatchNorm statistics again on them."""
    model.set_weights(average_weights(model, files))
    if images is not None:
        reestimate_batchnorm(model, images)
