"""Tiny ONNX models with cifar-edge metadata, for the runtime tests.

The graph is a deterministic colour classifier: image_rgb (N, 32, 32, 3) float32 0-255 ->
mean over H, W -> (N, 3) / 255 -> MatMul W (3, 10) -> Softmax. Pure red is "airplane", pure
green "automobile", pure blue "bird", yellow (red + green) "cat". ``reference_probabilities``
computes the same in numpy, so tests can check the runtime feeds raw 0-255 pixels.

``onnx`` is only in the full environment; the base environment uses the committed copies in
tests/data (regenerate them with ``python tests/runtime_models.py``). The fixtures that hand
these models to tests (``tiny_model``, ``no_metadata_model``, ``bundled_assets``) are in conftest.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from runtime.model.contract import (
    CIFAR10_CLASSES,
    FORMAT_VERSION,
    KEY_CLASS_NAMES,
    KEY_FORMAT,
    KEY_INPUT,
    KEY_OUTPUT,
    KEY_PROVENANCE,
    KEY_SELF_CHECK,
    KEY_VARIANT,
    InputContract,
)
from runtime.model.selfcheck import vectors_for

DATA = Path(__file__).resolve().parent / "data"
COMMITTED = {"contract": DATA / "tiny_contract.onnx", "no_metadata": DATA / "tiny_no_metadata.onnx"}


def weights() -> np.ndarray:
    """(3, 10) float32: strong colour columns for classes 0-3, small fixed values elsewhere."""
    w = np.random.default_rng(0).uniform(-0.5, 0.5, (3, 10)).astype(np.float32)
    w[:, :4] = 0.0
    w[0, 0] = w[1, 1] = w[2, 2] = 8.0
    w[0, 3] = w[1, 3] = 5.0
    return w


def reference_probabilities(batch_nhwc: np.ndarray, output: str = "probabilities") -> np.ndarray:
    """What the tiny model computes, in numpy: (N, 32, 32, 3) float 0-255 -> (N, 10)."""
    logits = batch_nhwc.astype(np.float64).mean(axis=(1, 2)) / 255.0 @ weights()
    if output == "logits":
        return logits
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def self_check_images(size: int = 32) -> np.ndarray:
    """(8, size, size, 3) uint8 RGB: the four colours the model knows, then four noise images."""
    colours = [solid(rgb, (size, size)) for rgb in ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0))]
    noise = np.random.default_rng(1).integers(0, 256, (4, size, size, 3), dtype=np.uint8)
    return np.concatenate([np.stack(colours), noise])


def self_check_json(variant: str = "fp32", size: int = 32, perturb: float = 0.0) -> str:
    """The tiny model's self-check vectors, its answers computed in numpy (softmax'd, as the
    runtime compares them); ``perturb`` shifts every expected probability by that much."""
    images = self_check_images(size)
    probs = reference_probabilities(images.astype(np.float32))
    return vectors_for(images, probs + perturb, probs, variant, {"cpu": "tests/runtime_models.py"}).to_json()


def metadata(class_names=CIFAR10_CLASSES, contract: InputContract | None = None,
             output: str = "probabilities", variant: str = "fp32", self_check: bool = True) -> dict[str, str]:
    meta = {
        KEY_FORMAT: FORMAT_VERSION,
        KEY_CLASS_NAMES: json.dumps(list(class_names)),
        KEY_INPUT: (contract or InputContract()).to_json(),
        KEY_OUTPUT: output,
        KEY_VARIANT: variant,
        KEY_PROVENANCE: json.dumps({"source": "tests/runtime_models.py"}),
    }
    if self_check and len(class_names) == 10 and contract in (None, InputContract()):
        meta[KEY_SELF_CHECK] = self_check_json(variant)
    return meta


def build_model(path: str | Path, *, meta: dict[str, str] | None = None, with_metadata: bool = True,
                output: str = "probabilities", batch: int | str = "N", n_classes: int = 10,
                height: int = 32, width: int = 32) -> Path:
    """Write the tiny colour classifier to ``path`` (needs the ``onnx`` package)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = weights()
    if n_classes != 10:
        w = np.resize(w, (3, n_classes)).astype(np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["image_rgb"], ["mean"], axes=[1, 2], keepdims=0),
        helper.make_node("Mul", ["mean", "scale"], ["scaled"]),
        helper.make_node("MatMul", ["scaled", "W"], ["logits"]),
    ]
    out_name = "logits"
    if output == "probabilities":
        nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1))
        out_name = "probabilities"
    graph = helper.make_graph(
        nodes, "tiny_colour_classifier",
        [helper.make_tensor_value_info("image_rgb", TensorProto.FLOAT, [batch, height, width, 3])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [batch, n_classes])],
        initializer=[numpy_helper.from_array(w, "W"),
                     numpy_helper.from_array(np.array(1 / 255.0, np.float32), "scale")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="cifar-edge-tests")
    model.ir_version = 8  # readable by any onnxruntime >= 1.14
    if with_metadata:
        helper.set_model_props(model, meta if meta is not None else metadata(output=output))
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def solid(rgb: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> np.ndarray:
    """(H, W, 3) uint8 RGB filled with one colour; ``size`` is (width, height)."""
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[...] = rgb
    return arr


if __name__ == "__main__":
    build_model(COMMITTED["contract"])
    build_model(COMMITTED["no_metadata"], with_metadata=False)
    for p in COMMITTED.values():
        print(p, p.stat().st_size, "bytes")
