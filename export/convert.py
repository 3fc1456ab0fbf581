"""Keras → ONNX: load safely, check the model fits the contract, convert, check the result.

File in (a ``.keras`` archive), ModelProto out; saving is ``save_onnx`` (atomic).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.atomic import atomic_path
from runtime.contract import CIFAR10_CLASSES, InputContract
from runtime.errors import ModelError
from runtime.session import create_session

DEFAULT_OPSET = 17  # onnxruntime >= 1.14 everywhere (Pi, Jetson); tf2onnx's tested default
INPUT_NAME = "image_rgb"
OUTPUT_NAME = "probabilities"
BATCH_DIM = "batch"  # symbolic name of the dynamic batch dimension


MIN_INPUT_SIZE = 16  # pixels: train.config.MIN_INPUT_SIZE, the smallest input cifar-train builds


@dataclass(frozen=True)
class KerasSource:
    path: Path
    model: object  # keras.Model
    output_kind: str  # "probabilities" (softmax inside the graph) or "logits"
    class_names: tuple[str, ...]
    contract: InputContract = InputContract()  # its input size; the rest is the runtime's one contract


def _keras():
    from train.quiet_import import import_keras

    return import_keras()


def load_keras(path: str | os.PathLike) -> KerasSource:
    """Load a ``.keras`` archive in safe mode (no code from the file runs) and check its shape:
    one square RGB input of any size, one output of a score per class the run named."""
    from train.models import load_keras_model

    path = Path(path)
    model = load_keras_model(path)
    contract = _input_contract(path, model)
    class_names = _class_names(path, _num_classes(path, model))
    return KerasSource(path, model, _output_kind(_keras(), model), class_names, contract)


def _input_contract(path: Path, model) -> InputContract:
    inputs = list(model.inputs or [])
    if len(inputs) != 1:
        raise ModelError(f"{path}: model has {len(inputs)} inputs, expected one image input")
    shape = tuple(inputs[0].shape)[1:]
    if len(shape) != 3 or shape[2] != 3 or shape[0] != shape[1] or not (shape[0] or 0) >= MIN_INPUT_SIZE:
        raise ModelError(f"{path}: model input is {shape}, expected (32, 32, 3) or another square RGB size "
                         f"(N, N, 3), N >= {MIN_INPUT_SIZE} (NHWC raw pixels)")
    return InputContract(height=int(shape[0]), width=int(shape[1]))


def _num_classes(path: Path, model) -> int:
    outputs = [tuple(o.shape)[1:] for o in model.outputs or []]
    if len(outputs) != 1 or len(outputs[0]) != 1 or not (outputs[0][0] or 0) >= 2:
        raise ModelError(f"{path}: model output is {outputs[0] if len(outputs) == 1 else outputs}, "
                         "expected (K,) class scores, K >= 2")
    return int(outputs[0][0])


def _output_kind(keras, model) -> str:
    """'probabilities' when the graph ends in a softmax, else 'logits'."""
    last = model.layers[-1]
    if isinstance(last, keras.layers.Softmax):
        return "probabilities"
    activation = getattr(last, "activation", None)
    if activation is not None and getattr(activation, "__name__", "") == "softmax":
        return "probabilities"
    return "logits"


def _class_names(path: Path, num_classes: int) -> tuple[str, ...]:
    """The ``num_classes`` names from the training run's config.json beside the model; CIFAR-10's
    for a 10-class model without one."""
    import json

    config = path.parent / "config.json"
    try:
        names = json.loads(config.read_text()).get("class_names")
    except (OSError, ValueError, AttributeError):
        names = None
    if isinstance(names, list) and len(names) == num_classes and all(isinstance(n, str) for n in names):
        return tuple(names)
    if names is None and num_classes == len(CIFAR10_CLASSES):
        return CIFAR10_CLASSES
    recorded = f"{config} names {len(names)}" if isinstance(names, list) else "no config.json beside it names them"
    raise ModelError(f"{path}: model output is ({num_classes},), expected ({len(CIFAR10_CLASSES)},) CIFAR-10 "
                     f"class scores, or a run's config.json naming its {num_classes} classes ({recorded})")


def to_onnx(source: KerasSource, opset: int = DEFAULT_OPSET):
    """Convert with tf2onnx (its Keras 3 path); input NHWC float32 with a dynamic batch."""
    contract = source.contract
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec((None, contract.height, contract.width, contract.channels), tf.float32,
                          name=INPUT_NAME),)
    try:
        model_proto, _ = tf2onnx.convert.from_keras(source.model, input_signature=spec, opset=opset)
    except Exception as exc:
        raise ModelError(f"{source.path}: tf2onnx could not convert the model at opset {opset} "
                         f"({type(exc).__name__}: {str(exc)[:200]})") from None
    graph = model_proto.graph
    graph.output[0].name = _rename_output(graph, graph.output[0].name, OUTPUT_NAME)
    for value in (graph.input[0], graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
    return model_proto


def _rename_output(graph, old: str, new: str) -> str:
    if old == new:
        return new
    for node in graph.node:
        node.output[:] = [new if o == old else o for o in node.output]
        node.input[:] = [new if i == old else i for i in node.input]
    return new


def check_onnx(model_proto, contract: InputContract | None = None, num_classes: int = len(CIFAR10_CLASSES)) -> None:
    """The ONNX checker, then one real run in onnxruntime on a batch of 2."""
    import onnx

    contract = contract or InputContract()
    try:
        onnx.checker.check_model(model_proto)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"the converted ONNX model fails the ONNX checker: {str(exc)[:300]}") from None
    session = create_session(model_proto)
    batch_nhwc = np.zeros((2, contract.height, contract.width, contract.channels), np.float32)
    out = session.run(None, {session.get_inputs()[0].name: batch_nhwc})[0]
    if out.shape != (2, num_classes) or not np.all(np.isfinite(out)):
        raise ModelError(f"the converted ONNX model gives output {out.shape} "
                         f"(finite: {bool(np.all(np.isfinite(out)))}), expected (2, {num_classes})")


def save_onnx(model_proto, path: str | os.PathLike) -> int:
    """Write atomically; returns the file size in bytes. ModelError if the path is unwritable."""
    import onnx

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            onnx.save_model(model_proto, os.fspath(tmp))
    except OSError as exc:
        raise ModelError(f"{path}: cannot write the ONNX file ({exc.strerror or exc})") from None
    return path.stat().st_size
