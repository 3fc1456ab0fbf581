"""The input/output contract a cifar-edge ONNX model carries in its metadata.

``export`` writes these keys, ``runtime`` reads them: this module is the one place they are
named. Every value is a string (ONNX ``metadata_props``); structured values are JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Mapping

from runtime.errors import ModelError

FORMAT_VERSION = "1"

# metadata_props keys
KEY_FORMAT = "cifar_edge.format"
KEY_CLASS_NAMES = "cifar_edge.class_names"  # JSON list[str], index = output position
KEY_INPUT = "cifar_edge.input"  # JSON InputContract
KEY_OUTPUT = "cifar_edge.output"  # "probabilities" or "logits"
KEY_VARIANT = "cifar_edge.variant"  # "fp32" | "int8" | "fp16"
KEY_PROVENANCE = "cifar_edge.provenance"  # JSON: source sha256, tool versions, created
KEY_PARITY = "cifar_edge.parity"  # JSON: parity figures measured at export time
# JSON: the temperature baked in before the Softmax, what it was fitted on, ECE/NLL before and
# after; "null" for an uncalibrated file (absent in files exported before calibration existed).
KEY_CALIBRATION = "cifar_edge.calibration"
KEY_VIEWS = "cifar_edge.views"  # "single", or "flip": the image and its mirror, logits averaged
# JSON (runtime.model.selfcheck.SelfCheckVectors): a few parity images as uint8 and this file's answers
# for them on the export machine, which every load checks; absent in files exported before it.
KEY_SELF_CHECK = "cifar_edge.self_check"
JSON_KEYS = (KEY_CLASS_NAMES, KEY_INPUT, KEY_PROVENANCE, KEY_PARITY, KEY_CALIBRATION, KEY_SELF_CHECK)  # values stored as JSON text
REQUIRED_KEYS = (KEY_FORMAT, KEY_CLASS_NAMES, KEY_INPUT)
HOW_TO_EXPORT = ("export the Keras model with `cifar-export`, which writes the class names and "
                 "input contract into the ONNX metadata")

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip

# Resize policies the runtime knows. "center-crop" crops the largest centred square and then
# resizes it with an anti-aliased filter; "stretch" resizes the whole image, ignoring aspect.
RESIZE_POLICIES = ("center-crop", "stretch")


@dataclass(frozen=True)
class InputContract:
    """What the model's single input expects. Scaling/normalization is inside the graph."""

    height: int = 32
    width: int = 32
    channels: int = 3
    layout: str = "NHWC"  # batch, height, width, channels
    color_order: str = "RGB"
    dtype: str = "float32"
    value_range: tuple[float, float] = field(default=(0.0, 255.0))  # raw pixels, not scaled
    resize: str = "center-crop"  # one of RESIZE_POLICIES
    resample: str = "bicubic"  # Pillow filter used by the resize, anti-aliased when shrinking

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "InputContract":
        raw = json.loads(text)
        raw["value_range"] = tuple(raw["value_range"])
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def variant_label(variant: str, views: str) -> str:
    """A variant as people read it: "int8", or "int8+flip" for a file that averages two views."""
    return variant + ("+flip" if views == "flip" else "")


def calibration_of(meta: Mapping[str, str]) -> dict | None:
    """The ``KEY_CALIBRATION`` record of a metadata map (temperature, what it was fitted on,
    ECE/NLL before and after), or None for an uncalibrated file or an unreadable value."""
    try:
        calibration = json.loads(meta.get(KEY_CALIBRATION, "null"))
    except ValueError:
        return None
    return calibration if isinstance(calibration, dict) and "temperature" in calibration else None


@dataclass(frozen=True)
class ModelMetadata:
    """What a cifar-edge ONNX file says about itself, read from its metadata_props."""

    class_names: tuple[str, ...]  # index = output position
    contract: InputContract
    output_kind: str  # "probabilities" or "logits"
    variant: str  # "fp32" | "int8" | "fp16" | "unknown"
    raw: Mapping[str, str]  # every metadata_props entry, as stored (strings)
    source: str  # the file it was read from, for messages

    @property
    def views(self) -> str:
        """"single", or "flip" when the graph averages the image with its mirror."""
        return self.raw.get(KEY_VIEWS, "single")

    @property
    def temperature(self) -> float | None:
        """The calibration temperature baked into the graph, None when there is none."""
        calibration = calibration_of(self.raw)
        return float(calibration["temperature"]) if calibration else None

    @property
    def label(self) -> str:
        """The variant as people read it: "int8", "fp32+flip"."""
        return variant_label(self.variant, self.views)

    @classmethod
    def from_map(cls, meta: Mapping[str, str], source: str) -> "ModelMetadata":
        """Parse ``meta`` (an ONNX custom metadata map) of the model at ``source``; a
        ModelError says what is missing or unreadable and how to get a proper file."""
        missing = [k for k in REQUIRED_KEYS if k not in meta]
        if missing:
            raise ModelError(f"{source} has no cifar-edge metadata (missing {', '.join(missing)}); "
                             f"{HOW_TO_EXPORT}")
        try:
            class_names = tuple(json.loads(meta[KEY_CLASS_NAMES]))
            contract = InputContract.from_json(meta[KEY_INPUT])
        except (ValueError, TypeError, KeyError) as exc:
            raise ModelError(f"{source}: unreadable cifar-edge metadata ({exc}); {HOW_TO_EXPORT}") from None
        return cls(class_names, contract, meta.get(KEY_OUTPUT, "probabilities"),
                   meta.get(KEY_VARIANT, "unknown"), dict(meta), source)

    def decoded(self) -> dict[str, object]:
        """``raw`` with the JSON-valued keys (class names, input, provenance, parity) decoded."""
        decoded: dict[str, object] = {}
        for key, value in self.raw.items():
            try:
                decoded[key] = json.loads(value) if key in JSON_KEYS else value
            except ValueError as exc:
                raise ModelError(f"{self.source}: unreadable cifar-edge metadata ({key}: {exc}); "
                                 f"{HOW_TO_EXPORT}") from None
        return decoded
