"""What a model expects its pixels scaled to, declared, baked into the graph and checked.

Every exported file takes raw 0-255 RGB pixels (``runtime.model.contract``). A model trained on
``x / 255`` computed outside it, as the Keras tutorials do, expects 0-1; one trained on
``(x / 255 - mean) / std`` expects that. Either is one affine per channel of the raw pixels,
``(x - raw_mean) / raw_std``, so the declaration becomes a Normalization layer with fixed
constants in front of the model: the Keras reference of the parity check and the ONNX file
then both see raw pixels, and ``export.fold`` folds the layer into the first convolution.

    Preprocessing(pixels="0-1")                                       # x / 255
    Preprocessing(pixels="0-1", mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))

Parity cannot catch a wrong declaration (both sides get the same wrong scaling), accuracy can:
with labelled data, ``check`` measures the model under the declaration and under each of
``ALTERNATIVES``, and stops when one is clearly better.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from runtime.errors import ModelError, OptionError
from train.models import CIFAR10_MEAN, CIFAR10_STD

# The value ranges a model may take: name → (offset, divisor), scaled = (raw - offset) / divisor.
PIXEL_RANGES = {"0-255": (0.0, 1.0), "0-1": (0.0, 255.0), "-1-1": (127.5, 127.5)}

CHECK_IMAGES = 2000  # test images the check runs on, spread evenly over the split (folders list class by class)
# "Clearly better": at least this many points more accurate, and the paired difference beyond
# noise: of the images exactly one of the two gets right, the alternative wins W and loses L
# with W - L >= Z·sqrt(W + L) (McNemar's test at about 3 sigma).
CLEAR_GAIN_POINTS = 5.0
CLEAR_Z = 3.0


@dataclass(frozen=True)
class Preprocessing:
    """What the model's input takes: ``pixels`` scaled to a range, then per-channel
    ``(scaled - mean) / std`` in the units of ``pixels`` (None: 0 and 1)."""

    pixels: str = "0-255"  # "0-255" raw, "0-1" x / 255, "-1-1" x / 127.5 - 1
    mean: tuple[float, float, float] | None = None  # R, G, B
    std: tuple[float, float, float] | None = None  # R, G, B, each > 0

    def __post_init__(self):
        if self.pixels not in PIXEL_RANGES:
            raise OptionError(f"--pixels {self.pixels!r}: expected one of {', '.join(PIXEL_RANGES)}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _three_channels(value, f"--{name}", positive=name == "std"))

    def raw_affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(raw_mean, raw_std), (3,) float64 each: the model's input is (raw - raw_mean) / raw_std."""
        offset, divisor = PIXEL_RANGES[self.pixels]
        mean = np.zeros(3) if self.mean is None else np.array(self.mean, np.float64)
        std = np.ones(3) if self.std is None else np.array(self.std, np.float64)
        return offset + divisor * mean, divisor * std

    @property
    def is_identity(self) -> bool:
        mean, std = self.raw_affine()
        return bool(np.all(mean == 0) and np.all(std == 1))

    def same_as(self, other: "Preprocessing") -> bool:
        """The same function to 0.1%: CIFAR-10's mean/std as tutorials round them are CIFAR10_NORMALIZED."""
        return all(np.allclose(a, b, rtol=1e-3, atol=1e-3) for a, b in zip(self.raw_affine(), other.raw_affine()))

    def apply(self, batch_nhwc: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) float32 raw 0-255 → what the model takes, float32."""
        mean, std = self.raw_affine()
        return ((batch_nhwc - mean.astype(np.float32)) / std.astype(np.float32)).astype(np.float32)

    def layer(self):
        """A Keras layer computing ``apply`` with fixed constants; None for raw pixels."""
        if self.is_identity:
            return None
        keras = _keras()
        mean, std = self.raw_affine()
        return keras.layers.Normalization(mean=mean.tolist(), variance=(std * std).tolist(),
                                          name="declared_preprocessing")

    def flags(self) -> str:
        """The cifar-export options that declare this."""
        parts = [f"--pixels {self.pixels}"]
        parts += [f"--{name} {','.join(f'{v:g}' for v in getattr(self, name))}" for name in ("mean", "std")
                  if getattr(self, name) is not None]
        return " ".join(parts)

    def describe(self) -> str:
        """``0-1``, ``0-1, mean (...), std (...)`` or ``CIFAR-10 mean/std``: how people read it."""
        if self.same_as(CIFAR10_NORMALIZED):
            return "CIFAR-10 mean/std"
        text = self.pixels
        for name in ("mean", "std"):
            if getattr(self, name) is not None:
                text += f", {name} ({', '.join(f'{v:g}' for v in getattr(self, name))})"
        return text

    def phrase(self) -> str:
        """How the stop line says a model was fed: "when pixels are scaled to 0-1"."""
        if self.same_as(CIFAR10_NORMALIZED):
            return "when pixels are normalized with the CIFAR-10 mean and std"
        if self.mean is None and self.std is None:
            return "with raw 0-255 pixels" if self.pixels == "0-255" else f"when pixels are scaled to {self.pixels}"
        return f"with pixels as {self.describe()}"

    def to_dict(self) -> dict:
        return {key: (list(value) if isinstance(value, tuple) else value) for key, value in asdict(self).items()}


def _three_channels(value, option: str, positive: bool, shown: str | None = None) -> tuple[float, float, float]:
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        numbers = ()
    if len(numbers) == 1:
        numbers *= 3
    if len(numbers) != 3 or not all(math.isfinite(v) and (v > 0 or not positive) for v in numbers):
        raise OptionError(f"{option} {shown or repr(value)}: expected three numbers R,G,B (or one for all three)"
                          + (", each > 0" if positive else ""))
    return numbers


def parse_channels(text: str, option: str) -> tuple[float, float, float]:
    """``"0.5,0.5,0.5"`` (or ``"0.5"``) → three floats; an OptionError naming ``option`` otherwise."""
    return _three_channels(text.split(","), option, positive=option == "--std", shown=repr(text))


RAW = Preprocessing()
# train.models' constants in 0-1 units to 4 digits: (0.4914, 0.4822, 0.4465) and (0.247, 0.2435,
# 0.2616), exactly what the tutorials write.
CIFAR10_NORMALIZED = Preprocessing("0-1", mean=tuple(round(v / 255, 4) for v in CIFAR10_MEAN),
                                   std=tuple(round(v / 255, 4) for v in CIFAR10_STD))
# What the check tries besides the declaration: the three pixel ranges tutorials use, and the
# CIFAR-10 mean/std (in 0-1 units the same function: (x/255 - m/255) / (s/255) = (x - m) / s).
# ImageNet's mean/std (0.485, 0.456, 0.406 / 0.229, 0.224, 0.225) are within 0.05 of these, so a
# model expecting them should score near its best under this one and be caught (not measured).
ALTERNATIVES = (RAW, Preprocessing("0-1"), Preprocessing("-1-1"), CIFAR10_NORMALIZED)


# --- a scaling layer inside the model --------------------------------------------------------

def _keras():
    from train.quiet_import import import_keras

    return import_keras()


def scaling_layer(model):
    """The model's first layer when it scales the pixels itself (a Rescaling or Normalization
    right after the input; augmentation layers before it skipped, nested models looked into),
    else None."""
    keras = _keras()
    for layer in _leading_layers(keras, model):
        if type(layer).__name__.startswith("Random"):  # augmentation: the identity at inference
            continue
        return layer if isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization)) else None
    return None


def _leading_layers(keras, model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leading_layers(keras, layer)
        elif not isinstance(layer, keras.layers.InputLayer):
            yield layer


# --- the check ------------------------------------------------------------------------------

class PreprocessingMismatch(ModelError):
    """The model scores clearly better fed another way than declared. Carries the check."""

    def __init__(self, message: str, check: dict, better: Preprocessing):
        super().__init__(message)
        self.check, self.better = check, better


def check_images(n: int) -> np.ndarray:
    """Indices of the images the check uses: CHECK_IMAGES spread evenly over ``n``."""
    return np.unique(np.linspace(0, n - 1, min(n, CHECK_IMAGES)).round().astype(int))


def check(predict, batch_nhwc: np.ndarray, labels: np.ndarray, declared: Preprocessing, how: str,
          name: str, stop: bool = True) -> dict:
    """Top-1 accuracy of ``predict`` (the model as saved, (N, S, S, 3) → (N, K)) with ``batch_nhwc``
    (raw 0-255) fed as ``declared`` and as each of ALTERNATIVES, on CHECK_IMAGES of them.
    Returns the record; when an alternative is clearly better, raises PreprocessingMismatch
    (``stop``) or says so in the record. ``how``: ModelInput.how; ``name``: the model file, for
    the message."""
    chosen = check_images(len(batch_nhwc))
    x, y = batch_nhwc[chosen], labels[chosen]
    tried = [declared] + [p for p in ALTERNATIVES if not p.same_as(declared)]
    right = {p: predict(p.apply(x)).argmax(1) == y for p in tried}
    accuracy = {p: float(right[p].mean() * 100) for p in tried}
    record = {"images": int(len(chosen)), "accuracy": {p.describe(): round(accuracy[p], 2) for p in tried},
              "clearly_better": None}
    clear = [p for p in tried[1:] if _clearly_better(right[p], right[declared])]
    if clear:
        best = max(clear, key=accuracy.get)
        message = (f"{name}: this model scores {accuracy[best]:.1f}% {best.phrase()} and {accuracy[declared]:.1f}% "
                   f"{how} ({declared.describe()}) on {len(chosen):,} test images: pass {best.flags()}")
        record["clearly_better"] = {"preprocessing": best.describe(), "flags": best.flags(), "message": message}
        if stop:
            raise PreprocessingMismatch(message, record, best)
    return record


def _clearly_better(candidate: np.ndarray, declared: np.ndarray) -> bool:
    wins, losses = int(np.sum(candidate & ~declared)), int(np.sum(~candidate & declared))
    gain = (wins - losses) / len(candidate) * 100
    return gain >= CLEAR_GAIN_POINTS and wins - losses >= CLEAR_Z * math.sqrt(wins + losses)


# --- what the model takes, and why ----------------------------------------------------------

ASSUMED_NOTE = ("assumed the model takes 0-255 pixels; pass --pixels 0-1 if it was trained on x/255 (or "
                "--pixels -1-1, --mean, --std), or --data to check")
HOW = {"declared": "as declared", "model": "as the model is (it scales its input itself)",
       "assumed": "as assumed without --pixels"}


@dataclass
class ModelInput:
    """How the model as saved takes its pixels, and where that came from."""

    preprocessing: Preprocessing  # what goes in front of it (RAW: nothing)
    source: str  # "declared" (--pixels, --mean, --std), "model" (its first layer scales), "assumed"
    scaling_layer: str | None = None  # that first layer, "name (Class)", if the model has one
    check: dict | None = None  # the accuracy check's record; None when it did not run

    @property
    def how(self) -> str:
        return HOW[self.source]

    def notes(self) -> list[str]:
        """What the report (and a stderr line) should say when nothing checked the pixels."""
        if self.check is not None:
            better = self.check["clearly_better"]
            return [] if better is None else [f"{better['message']} (not stopped: --no-pixel-check)"]
        if self.source == "assumed":
            return [ASSUMED_NOTE]
        if self.source == "declared" and self.scaling_layer and not self.preprocessing.is_identity:
            return [f"the model's first layer, {self.scaling_layer}, scales its input already, and the declared "
                    f"{self.preprocessing.describe()} goes in front of it: pass --data to check"]
        return []

    def describe(self) -> str:
        """One line for the report table."""
        source = {"declared": "declared", "model": f"the model's own {self.scaling_layer}",
                  "assumed": "assumed"}[self.source]
        text = f"input pixels: {self.preprocessing.describe()} ({source})"
        if not self.preprocessing.is_identity:
            text += ", baked into the graph in front of the model"
        if self.check is not None:
            text += (f"; top-1 accuracy on {self.check['images']:,} test images: "
                     + ", ".join(f"{k} {v:.2f}%" for k, v in self.check["accuracy"].items()))
        return text

    def to_dict(self) -> dict:
        return {**self.preprocessing.to_dict(), "source": self.source, "scaling_layer": self.scaling_layer,
                "baked_in": not self.preprocessing.is_identity, "check": self.check, "summary": self.describe()}


def model_input(model, declared: Preprocessing | None) -> ModelInput:
    """The declaration, else RAW: said by the model's own scaling layer, or assumed."""
    layer = scaling_layer(model)
    found = None if layer is None else f"{layer.name} ({type(layer).__name__})"
    if declared is not None:
        return ModelInput(declared, "declared", found)
    return ModelInput(RAW, "assumed" if layer is None else "model", found)
