"""The self-description written into every exported ONNX file.

The keys come from ``runtime.model.contract`` (the one place they are named); this module fills in
their values: class names, input contract, output kind, variant, provenance and parity.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
from dataclasses import dataclass
from importlib import metadata as _pkg
from pathlib import Path

from runtime.model.contract import (
    CIFAR10_CLASSES,
    FORMAT_VERSION,
    KEY_CALIBRATION,
    KEY_CLASS_NAMES,
    KEY_FORMAT,
    KEY_INPUT,
    KEY_OUTPUT,
    KEY_PARITY,
    KEY_PROVENANCE,
    KEY_SELF_CHECK,
    KEY_VARIANT,
    KEY_VIEWS,
    InputContract,
    variant_label,
)
from runtime.model.session import create_session, model_metadata

PRODUCER = "cifar-edge export"
TOOLS = ("tensorflow", "tensorflow-cpu", "keras", "tf2onnx", "onnx", "onnxruntime", "numpy")


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TOOLS:
        try:
            versions[name] = _pkg.version(name)
        except _pkg.PackageNotFoundError:
            pass
    return versions


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def provenance(source: Path, source_sha256: str, opset: int, created: str,
               quantization: dict | None = None, folds: list[str] | None = None, *,
               preprocessing: dict | None = None) -> dict:
    """Where a file came from: enough to rebuild it or to tell two exports apart."""
    return {
        "source": source.name,
        "source_sha256": source_sha256,
        "tools": tool_versions(),
        "opset": opset,
        "created": created,
        "quantization": quantization,  # None for fp32; the recipe for int8 / fp16
        "folded": list(folds or []),  # export.fold's rewrites, in order (empty: converted as trained)
        # How the model as saved takes its pixels (export.preprocessing.ModelInput.to_dict): declared,
        # found inside it or assumed, what was baked in front of it, and the accuracy check.
        "preprocessing": preprocessing,
    }


@dataclass(frozen=True)
class FileVariant:
    """Which of an export's files this is: its variant, its views and the temperature baked in."""

    variant: str  # "fp32" | "int8" | "fp16"
    views: str = "single"  # "flip": the file averages each image with its mirror
    # The temperature baked in, what it was fitted on and its figures there (KEY_CALIBRATION); None: none.
    temperature: dict | None = None


def write_metadata(model_proto, file: FileVariant, *, class_names: tuple[str, ...], output_kind: str,
                   provenance_info: dict, parity: dict | None, contract: InputContract | None = None,
                   self_check=None):
    """Set every cifar-edge key (replacing old values) plus doc_string/producer. In place.
    ``self_check``: the file's ``runtime.model.selfcheck.SelfCheckVectors`` (None: the key says null)."""
    contract = contract or InputContract()
    variant, views, temperature = file.variant, file.views, file.temperature
    values = {
        KEY_FORMAT: FORMAT_VERSION,
        KEY_CLASS_NAMES: json.dumps(list(class_names)),
        KEY_INPUT: contract.to_json(),
        KEY_OUTPUT: output_kind,
        KEY_VARIANT: variant,
        KEY_PROVENANCE: json.dumps(provenance_info, sort_keys=True),
        KEY_PARITY: json.dumps(parity, sort_keys=True) if parity is not None else "null",
        KEY_CALIBRATION: json.dumps(temperature, sort_keys=True) if temperature is not None else "null",
        KEY_VIEWS: views,
        KEY_SELF_CHECK: self_check.to_json() if self_check is not None else "null",
    }
    kept = [p for p in model_proto.metadata_props if p.key not in values]
    del model_proto.metadata_props[:]
    model_proto.metadata_props.extend(kept)
    for key, value in values.items():
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value
    model_proto.producer_name = PRODUCER
    model_proto.producer_version = _version_of("cifar-edge")
    label = variant_label(variant, views)
    calibrated = f", temperature {temperature['temperature']:.4g} fitted" if temperature else ""
    kind = "CIFAR-10" if tuple(class_names) == CIFAR10_CLASSES else f"{len(class_names)}-class"
    model_proto.doc_string = (
        f"{kind} image classifier ({label}{calibrated}) exported from {provenance_info['source']} "
        f"(sha256 {provenance_info['source_sha256'][:12]}). Input: {contract.layout} "
        f"{contract.color_order} {contract.dtype} raw pixels {contract.value_range[0]:g}-"
        f"{contract.value_range[1]:g}, {contract.height}x{contract.width}, resize '{contract.resize}'. "
        f"Output: {output_kind} over {len(class_names)} classes. Metadata keys cifar_edge.*."
    )
    return model_proto


def read_metadata(path: str | os.PathLike) -> dict[str, object]:
    """The cifar-edge keys of an .onnx file, JSON values decoded, read the runtime's way
    (``runtime.model.session.model_metadata``); ModelError when the file has none."""
    return model_metadata(create_session(path), path).decoded()


def _version_of(dist: str) -> str:
    try:
        return _pkg.version(dist)
    except _pkg.PackageNotFoundError:
        return "0"
