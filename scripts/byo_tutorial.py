#!/usr/bin/env python3
"""The "bring your own model" check, by hand: a Keras tutorial's CIFAR-10 model, end to end.

Trains the model every Keras CIFAR-10 tutorial builds (a ``Sequential`` of three convolutions
and two dense layers, logits out), with the pixels divided by 255 *outside* the model, as the
tutorials do (``--scaling mean-std``: then normalized with the CIFAR-10 mean/std too); saves it
as ``model.keras`` and as legacy ``model.h5``:

    python scripts/byo_tutorial.py train /tmp/tutorial --data ../shared/data/cifar10

then, after ``cifar-export /tmp/tutorial/model.keras --pixels 0-1 --data ../shared/data/cifar10``,
measures how often the ONNX file, run through ``runtime.Classifier`` on the raw test images,
gives the same top-1 class as the Keras model given those images divided by 255:

    python scripts/byo_tutorial.py agree /tmp/tutorial/model.keras /tmp/tutorial/model.onnx \\
        --data ../shared/data/cifar10

Bounded: 10,000 training images (1,000 a class), 3 epochs, a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np

from runtime.model.contract import CIFAR10_CLASSES


def read_split(data: Path, split: str, per_class: int | None) -> tuple[list[Path], np.ndarray]:
    """(files, labels) of ``data/split/<class>/``, at most ``per_class`` a class, interleaved by
    class (so any prefix is balanced)."""
    by_class = [sorted((data / split / name).iterdir())[:per_class] for name in CIFAR10_CLASSES]
    files, labels = [], []
    for i in range(max(len(f) for f in by_class)):
        for label, class_files in enumerate(by_class):
            if i < len(class_files):
                files.append(class_files[i])
                labels.append(label)
    return files, np.array(labels)


def decode(files: list[Path]) -> np.ndarray:
    """(N, 32, 32, 3) uint8 RGB, as a tutorial reads them (the images are already 32x32)."""
    from PIL import Image

    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])


# How the tutorial scales the pixels outside the model: x / 255, or also the CIFAR-10 mean/std
# in 0-1 units (torchvision's constants), as the other common tutorial does.
SCALINGS = {
    "0-1": lambda x: x / 255.0,
    "mean-std": lambda x: (x / 255.0 - np.array([0.4914, 0.4822, 0.4465])) / np.array([0.2470, 0.2435, 0.2616]),
}
SCALING = click.option("--scaling", type=click.Choice(list(SCALINGS)), default="0-1", show_default=True,
                       help="How the pixels are scaled outside the model.")


def _keras():
    from train.quiet_import import import_keras

    return import_keras()


def tutorial_model():
    keras = _keras()
    L = keras.layers
    return keras.Sequential([
        keras.Input((32, 32, 3)),
        L.Conv2D(32, 3, activation="relu"), L.MaxPooling2D(),
        L.Conv2D(64, 3, activation="relu"), L.MaxPooling2D(),
        L.Conv2D(64, 3, activation="relu"),
        L.Flatten(), L.Dense(64, activation="relu"), L.Dense(10),
    ])


@click.group()
def main():
    """Train the tutorial model, or measure an export's agreement with it."""


@main.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--data", required=True, type=click.Path(exists=True, path_type=Path), help="CIFAR-10 JPEG folders.")
@click.option("--per-class", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Training images a class.")
@click.option("--epochs", type=click.IntRange(min=1), default=3, show_default=True)
@SCALING
def train(out: Path, data: Path, per_class: int, epochs: int, scaling: str):
    """Train on x / 255 (outside the model) and save OUT/model.keras and OUT/model.h5."""
    keras = _keras()

    keras.utils.set_random_seed(0)
    train_files, y_train = read_split(data, "train", per_class)
    test_files, y_test = read_split(data, "test", None)
    x_train, x_test = decode(train_files), decode(test_files)
    model = tutorial_model()
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(SCALINGS[scaling](x_train), y_train, epochs=epochs, batch_size=64, verbose=2)
    seconds = time.perf_counter() - start
    _, accuracy = model.evaluate(SCALINGS[scaling](x_test), y_test, verbose=0)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "model.keras")
    model.save(out / "model.h5")
    click.echo(f"trained on {len(x_train):,} images, {epochs} epochs, {seconds:.0f} s; "
               f"test accuracy {accuracy:.2%} (keras, scaled {scaling}) on {len(x_test):,} images; wrote {out}")


@main.command()
@click.argument("keras_model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("onnx_model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--data", required=True, type=click.Path(exists=True, path_type=Path), help="CIFAR-10 JPEG folders.")
@click.option("--images", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Test images, balanced over the classes.")
@SCALING
def agree(keras_model: Path, onnx_model: Path, data: Path, images: int, scaling: str):
    """Top-1 agreement: ONNX through runtime.Classifier on raw files vs Keras on scaled ones."""
    from runtime import Classifier

    files, labels = read_split(data, "test", None)
    files, labels = files[:images], labels[:images]
    classifier = Classifier(onnx_model, provider="cpu")
    onnx_top1 = np.array([CIFAR10_CLASSES.index(r.prediction.label)
                          for r in classifier.predict_files(files)])
    model = _keras().saving.load_model(keras_model, compile=False)
    keras_top1 = model.predict(SCALINGS[scaling](decode(files)), verbose=0).argmax(1)
    click.echo(f"{len(files):,} test images: top-1 agreement {np.mean(onnx_top1 == keras_top1):.2%}; "
               f"accuracy keras {np.mean(keras_top1 == labels):.2%}, onnx {np.mean(onnx_top1 == labels):.2%}")


if __name__ == "__main__":
    main()
