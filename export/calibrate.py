"""Graph rewrites at the end of export: a fitted temperature, and a mirror view.

Both work on the ONNX graph of any variant (FP32, INT8 QDQ, FP16) and keep its one input and
one output, so every runtime gets them with no code change:

- ``bake_temperature``: the logits are divided by T just before the final Softmax.
- ``add_flip_view``: the input batch is classified together with its mirror image in one run
  (concatenated on the batch axis) and the two views' logits are averaged before the Softmax.

The temperature is fitted (``runtime.model.confidence.fit_temperature``) on held-out *training*
images, never the test split: ``held_out_images`` finds the ones the model's run kept back, in
the training split its ``RunRecord`` read.
"""

from __future__ import annotations

import copy
import os
from typing import NamedTuple

import numpy as np

from runtime.errors import ModelError
from runtime.model.confidence import confidence_figures
from runtime.model.confidence import fit_temperature, log_probabilities, softmax, with_temperature
from runtime.model.contract import InputContract
from train.data import take_slice
from train.split import split_validation

from .parity import onnx_predictor, predict_all
from .run_record import RunRecord

TEMPERATURE = "cifar_edge_temperature"  # the initializer holding T
MIRROR_PREFIX = "cifar_edge_mirror"


def _final_softmax(graph):
    """The Softmax node whose output reaches the graph output through Casts/Identities only."""
    producers = {out: node for node in graph.node for out in node.output}
    name = graph.output[0].name
    while name in producers:
        node = producers[name]
        if node.op_type == "Softmax":
            return node
        if node.op_type not in ("Cast", "Identity"):
            break
        name = node.input[0]
    raise ModelError("cannot calibrate: the model's output is not a Softmax (a probabilities output is needed)")


def _elem_type(model, tensor: str) -> int:
    """The ONNX element type of ``tensor`` (float32 when shape inference cannot tell)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    for info in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        if info.name == tensor and info.type.tensor_type.elem_type:
            return info.type.tensor_type.elem_type
    return onnx.TensorProto.FLOAT


def _numpy_dtype(elem_type: int):
    import onnx

    return onnx.helper.tensor_dtype_to_np_dtype(elem_type)


def _insert_before(graph, consumer, new_nodes: list, new_input: str) -> None:
    """Put ``new_nodes`` just before ``consumer`` (keeping topological order) and feed it
    ``new_input`` in place of its first input."""
    index = list(graph.node).index(consumer)
    for offset, node in enumerate(new_nodes):
        graph.node.insert(index + offset, node)
    consumer.input[0] = new_input


def _sort_topologically(graph) -> None:
    """Order the nodes so that each comes after the producers of its inputs (onnx's checker
    requires it; onnxruntime's float16 converter appends its input Casts at the end)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise ModelError("the ONNX graph has a cycle or an input nothing produces")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [n for n in pending if all(n is not r for r in ready)]
    copies = [type(n)() for n in ordered]
    for copy_, node in zip(copies, ordered):
        copy_.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def bake_temperature(model_proto, temperature: float):
    """A copy of ``model_proto`` whose logits are divided by ``temperature`` before the Softmax."""
    import onnx
    from onnx import helper, numpy_helper

    if not temperature > 0:
        raise ValueError(f"a temperature must be positive, not {temperature}")
    model = copy.deepcopy(model_proto)
    graph = model.graph
    if any(init.name == TEMPERATURE for init in graph.initializer):
        raise ModelError("the model already has a calibration temperature")
    softmax = _final_softmax(graph)
    logits = softmax.input[0]
    dtype = _numpy_dtype(_elem_type(model, logits))
    graph.initializer.append(numpy_helper.from_array(np.array(temperature, dtype=dtype), TEMPERATURE))
    calibrated = f"{logits}_calibrated"
    _insert_before(graph, softmax, [helper.make_node("Div", [logits, TEMPERATURE], [calibrated],
                                                     name="cifar_edge_calibration")], calibrated)
    _sort_topologically(graph)
    onnx.checker.check_model(model)
    return model


def add_flip_view(model_proto):
    """A copy of ``model_proto`` (NHWC input) that runs each image and its left-right mirror as
    one batch of 2N and averages their logits before the Softmax: still (N, H, W, 3) in,
    (N, classes) out."""
    import onnx
    from onnx import helper, numpy_helper

    model = copy.deepcopy(model_proto)
    graph = model.graph
    if any(node.name.startswith(MIRROR_PREFIX) for node in graph.node):
        raise ModelError("the model already averages a mirror view")
    image = graph.input[0].name
    # Shapes recorded for inner tensors name their batch "N" like the input's: inside, it is 2N.
    # They are optional (onnxruntime infers them again), so they go.
    del graph.value_info[:]
    softmax = _final_softmax(graph)
    logits = softmax.input[0]
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)

    def const(name: str, values) -> str:
        graph.initializer.append(numpy_helper.from_array(np.array(values, dtype=np.int64), f"{MIRROR_PREFIX}_{name}"))
        return f"{MIRROR_PREFIX}_{name}"

    mirrored, both = f"{MIRROR_PREFIX}_image", f"{MIRROR_PREFIX}_batch"
    # Reverse the width axis (NHWC axis 2): start at the last column, step -1 to the first.
    head = [helper.make_node("Slice", [image, const("starts", [-1]), const("ends", [np.iinfo(np.int64).min]),
                                       const("axes", [2]), const("steps", [-1])], [mirrored],
                             name=f"{MIRROR_PREFIX}_slice"),
            helper.make_node("Concat", [image, mirrored], [both], axis=0, name=f"{MIRROR_PREFIX}_concat")]
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == image:
                node.input[i] = both
    for offset, node in enumerate(head):
        graph.node.insert(offset, node)

    views, averaged = f"{MIRROR_PREFIX}_views", f"{MIRROR_PREFIX}_logits"
    classes = graph.output[0].type.tensor_type.shape.dim[-1].dim_value or -1
    reshape = helper.make_node("Reshape", [logits, const("views_shape", [2, -1, classes])], [views],
                               name=f"{MIRROR_PREFIX}_reshape")
    if opset >= 18:  # ReduceMean's axes became an input in opset 18
        mean = helper.make_node("ReduceMean", [views, const("axes0", [0])], [averaged], keepdims=0,
                                name=f"{MIRROR_PREFIX}_mean")
    else:
        mean = helper.make_node("ReduceMean", [views], [averaged], axes=[0], keepdims=0,
                                name=f"{MIRROR_PREFIX}_mean")
    _insert_before(graph, softmax, [reshape, mean], averaged)
    _sort_topologically(graph)
    onnx.checker.check_model(model)
    return model


def mirror_average(probs: np.ndarray, probs_mirror: np.ndarray) -> np.ndarray:
    """What ``add_flip_view`` computes, from a model's probabilities on the images and on their
    mirrors: the softmax of the mean of the two views' logits (log p up to a constant)."""
    return softmax(0.5 * (log_probabilities(probs) + log_probabilities(probs_mirror))).astype(np.float32)


def as_baked(probs: np.ndarray, probs_mirror: np.ndarray | None, views: str,
             temperature: float | None) -> np.ndarray:
    """A model's probabilities on the images (``probs_mirror``: on their mirrors) as a file of it
    with ``views`` and ``temperature`` baked in gives them: both views averaged ("flip"), then
    the temperature applied. What parity expects of such a file."""
    expected = mirror_average(probs, probs_mirror) if views == "flip" else probs
    return expected if temperature is None else with_temperature(expected, temperature)


def confidence_on(probs: np.ndarray, labels: np.ndarray, temperature: float) -> dict:
    """ECE, NLL and accuracy of a calibrated file's ``probs`` before and after its ``temperature``."""
    return {"before": confidence_figures(with_temperature(probs, 1 / temperature), labels).to_dict(),
            "after": confidence_figures(probs, labels).to_dict()}


class HeldOut(NamedTuple):
    """The training images a model's run held out, to fit its temperature on; or why there are none."""

    images: np.ndarray | None  # (N, S, S, 3) uint8 RGB; None: none found
    labels: np.ndarray | None  # (N,) int64
    described: str  # what they are ("2,000 training images held out of the run in runs/x"), or why none


def held_out_training_images(model_path: str | os.PathLike, data: str | os.PathLike | None) -> HeldOut:
    """``held_out_images`` of the run whose folder holds ``model_path``, its training images
    read from ``data`` (None: the data the run recorded) at the size the run trained at."""
    run = RunRecord.beside(model_path)
    size = run.train.input_size if run.train is not None else 32
    splits = ("train",) if run.held_out_unknown(data) is None else ()
    return held_out_images(run.with_data(data, InputContract(height=size, width=size), splits))


def held_out_images(run: RunRecord) -> HeldOut:
    """The training images the model's ``run`` was kept from (``train.split.split_validation``
    of the training split the run read, as its config.json says), or why there are none."""
    why = run.held_out_unknown(run.data)
    if why is not None:
        return HeldOut(None, None, why)
    config = run.train
    split = split_validation(take_slice(run.training, config.train_limit, None, seed=config.seed),
                             config.val_images, config.seed)
    recorded = run.saved.get("validation_images")
    if recorded not in (None, len(split.x_val)):
        return HeldOut(None, None, (f"the data at {run.source} does not split as the run did ({len(split.x_val)} "
                                    f"held-out images here, {recorded} in {run.config_path})"))
    described = f"{len(split.x_val):,} training images held out of the run in {run.run_dir}"
    return HeldOut(split.x_val, split.y_val, described)


def bake_fitted_temperature(proto, held_out: HeldOut, label: str, quiet: bool | None = None) -> tuple[object, dict]:
    """(``proto`` with the temperature fitted on the ``held_out`` images baked in, what was fitted:
    the temperature, on what, how, and ECE/NLL before and after on those images)."""
    raw = predict_all(onnx_predictor(proto), held_out.images.astype("float32"), f"{label} held-out", quiet)
    temperature = fit_temperature(raw, held_out.labels)
    fitted = {"temperature": round(temperature, 6), "fitted_on": held_out.described, "method": "NLL, bisection on 1/T",
              "held_out": {"before": confidence_figures(raw, held_out.labels).to_dict(),
                           "after": confidence_figures(with_temperature(raw, temperature), held_out.labels).to_dict()}}
    return bake_temperature(proto, temperature), fitted
