"""The input/output contract a cifar-edge ONNX model carries in its metadata.

``export`` writes these keys, ``runtime`` reads them: this module is the one place they are
named. Every value is a string (ONNX ``metadata_props``); structured values are JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

FORMAT_VERSION = "1"

# metadata_props keys
KEY_FORMAT = "cifar_edge.format"
KEY_CLASS_NAMES = "cifar_edge.class_names"  # JSON list[str], index = output position
KEY_INPUT = "cifar_edge.input"  # JSON InputContract
KEY_OUTPUT = "cifar_edge.output"  # "probabilities" or "logits"
KEY_VARIANT = "cifar_edge.variant"  # "fp32" | "int8" | "fp16"
KEY_PROVENANCE = "cifar_edge.provenance"  # JSON: source sha256, tool versions, created
KEY_PARITY = "cifar_edge.parity"  # JSON: parity figures measured at export time

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
