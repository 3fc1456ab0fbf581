"""Keras → ONNX: load safely, check the model fits the contract, convert, check the result.

File in (a ``.keras`` archive or a legacy ``.h5`` model), ModelProto out; saving is
``save_onnx`` (atomic).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from runtime.atomic import atomic_path
from runtime.errors import ModelError, OptionError, listed, summary
from runtime.model.contract import CIFAR10_CLASSES, InputContract
from runtime.model.session import create_session
from train.config import MIN_INPUT_SIZE  # light: no TensorFlow

from .run_record import RunRecord

DEFAULT_OPSET = 17  # onnxruntime >= 1.14 everywhere (Pi, Jetson); tf2onnx's tested default
INPUT_NAME = "image_rgb"
OUTPUT_NAME = "probabilities"
BATCH_DIM = "batch"  # symbolic name of the dynamic batch dimension


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


def load_keras(path: str | os.PathLike, *, input_size: int | None = None,
               class_names: tuple[str, ...] | None = None, custom_objects: str | os.PathLike | Mapping | None = None,
               safe_mode: bool = True, run: RunRecord | None = None) -> KerasSource:
    """Load a ``.keras`` archive or a legacy ``.h5`` model (``train.loading``: safe mode unless
    ``safe_mode=False``, the model's own layers from ``custom_objects``) and check its shape: one
    square RGB input of any size (``input_size`` for a model that takes any), one output of a
    score per class (``class_names``, else those of its ``run``, read here when not given, or
    CIFAR-10's)."""
    from train.loading import load_keras_model

    path = Path(path)
    model = load_keras_model(path, custom_objects=custom_objects, safe_mode=safe_mode)
    contract = _input_contract(path, model, input_size)
    names = _class_names(path, _num_classes(path, model), class_names, run or RunRecord.beside(path))
    return KerasSource(path, model, _output_kind(_keras(), model), names, contract)


def _input_contract(path: Path, model, input_size: int | None = None) -> InputContract:
    inputs = list(model.inputs or [])
    if len(inputs) != 1:
        raise ModelError(f"{path}: model has {len(inputs)} inputs, expected one image input")
    shape = tuple(inputs[0].shape)[1:]
    if len(shape) == 3 and shape[2] == 3 and shape[0] is None and shape[1] is None:
        if input_size is None:
            raise ModelError(f"{path}: model input is {shape}, any size: pass --input-size N, the size it was "
                             "trained at (32 for CIFAR-10), which the ONNX file then takes")
        shape = (input_size, input_size, 3)
    elif input_size is not None and shape[:2] != (input_size, input_size):
        raise OptionError(f"--input-size {input_size}: the model's input is fixed at {shape}; leave --input-size "
                          "out (it is for models whose input takes any size)")
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


def _class_names(path: Path, num_classes: int, given: tuple[str, ...] | None, run: RunRecord) -> tuple[str, ...]:
    """The ``num_classes`` names: ``given`` (--classes), else those the training ``run``
    recorded in its config.json beside the model, else CIFAR-10's for a 10-class model."""
    if given is not None:
        if len(given) != num_classes:
            raise OptionError(f"--classes names {len(given)} classes {listed(given)} but the model outputs "
                              f"{num_classes} scores: pass one name per output, in output order")
        return tuple(given)
    names = run.class_names
    if isinstance(names, list) and len(names) == num_classes and all(isinstance(n, str) for n in names):
        return tuple(names)
    if names is None and num_classes == len(CIFAR10_CLASSES):
        return CIFAR10_CLASSES
    recorded = (f"{run.config_path} names {len(names)}" if isinstance(names, list)
                else "no config.json beside it names them")
    raise ModelError(f"{path}: model output is ({num_classes},), expected ({len(CIFAR10_CLASSES)},) CIFAR-10 "
                     f"class scores, or the names of its {num_classes} classes ({recorded}): pass --classes "
                     "a,b,c or --classes FILE (one name per line), in output order")


def parse_class_names(value: str) -> tuple[str, ...]:
    """``--classes``: a file of one name per line (blank lines skipped) when ``value`` is one,
    else comma-separated names. OptionError for an empty or repeated name."""
    path = Path(value)
    if path.is_file():
        try:
            names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise OptionError(f"--classes {path}: cannot read it ({exc})") from None
        where = f"--classes {path}"
    else:
        names, where = [name.strip() for name in value.split(",")], f"--classes {value!r}"
    if not names or not all(names):
        raise OptionError(f"{where}: an empty class name; pass names separated by commas, or a file of one "
                          "name per line")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise OptionError(f"{where}: {', '.join(repeated)} named twice; each output needs its own name")
    return tuple(names)


def as_functional(model, contract: InputContract, front=None):
    """What to convert: the model's layers (the same objects, so the same weights) as a
    functional model on a fixed (S, S, 3) input, after the layer ``front`` (None: nothing);
    ``model`` itself when it is functional already and there is no ``front``.

    tf2onnx cannot convert a Keras 3 ``Sequential`` (KeyError on an output tensor's name,
    tf2onnx issue #2448) and converts the same layers built functionally. Laid out flat, a chain
    of layers is also what ``export.fold`` folds; a model that is not a chain is called whole.
    """
    from .fold import layer_chain

    keras = _keras()
    if front is None and type(model).__name__ == "Functional":
        return model
    return _on_fixed_input(keras, contract, [front] if front is not None else [], layer_chain(model) or [model],
                           name=model.name)


def with_front(model, contract: InputContract, front=None):
    """The parity reference: ``model`` exactly as saved, called whole after the layer ``front``,
    so it takes raw pixels as the ONNX file does; ``model`` itself without a ``front``."""
    return model if front is None else _on_fixed_input(_keras(), contract, [front], [model], name=f"{model.name}_raw")


def _on_fixed_input(keras, contract: InputContract, *stages, name: str):
    inputs = keras.Input(shape=(contract.height, contract.width, contract.channels), dtype="float32",
                         name=INPUT_NAME)
    x = inputs
    for layers in stages:
        for layer in layers:
            x = layer(x)
    return keras.Model(inputs, x, name=name)


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
                         f"({type(exc).__name__}: {summary(exc)})") from None
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
