"""Graph rewrites at the end of export: a fitted temperature, and a mirror view.

Both work on the ONNX graph of any variant (FP32, INT8 QDQ, FP16) and keep its one input and
one output, so every runtime gets them with no code change:

- ``bake_temperature``: the logits are divided by T just before the final Softmax.
- ``add_flip_view``: the input batch is classified together with its mirror image in one run
  (concatenated on the batch axis) and the two views' logits are averaged before the Softmax.

The temperature is fitted (``runtime.model.confidence.fit_temperature``) on held-out *training*
images, never the test split: ``held_out_training_images`` finds the ones the model's run
folder kept back.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np

from runtime.errors import ModelError

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
    from runtime.model.confidence import log_probabilities, softmax

    return softmax(0.5 * (log_probabilities(probs) + log_probabilities(probs_mirror))).astype(np.float32)


def held_out_training_images(model_path: str | os.PathLike, data: str | os.PathLike | None):
    """(images, labels, description) of the training images the model's run was kept from, or
    (None, None, why not). The run folder is the model file's folder; its config.json says
    which images were held out (``train.fit.split_validation``)."""
    run_dir = Path(model_path).parent
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        return None, None, (f"no config.json beside {Path(model_path).name}, so which training images the "
                            "model never saw is unknown")
    from train.config import TrainConfig
    from train.data import load_for_model, take_slice
    from train.fit import split_validation

    saved = json.loads(config_path.read_text())
    config = TrainConfig.load(config_path)
    if config.val_images == 0:
        return None, None, "the run validated on the test split (--val-images 0): no training image was held out"
    source = data if data is not None else saved.get("data")
    if source is None:
        return None, None, "no --data and the run does not record its data"
    dataset = take_slice(load_for_model(source, model_path, config.input_size, splits=("train",)),
                         config.train_limit, None, seed=config.seed)
    split = split_validation(dataset, config.val_images, config.seed)
    if saved.get("validation_images") not in (None, len(split.x_val)):
        return None, None, (f"the data at {source} does not split as the run did ({len(split.x_val)} held-out "
                            f"images here, {saved['validation_images']} in {config_path})")
    return split.x_val, split.y_val, f"{len(split.x_val):,} training images held out of the run in {run_dir}"
