"""INT8 gives the same answers on x86 CPUs with and without VNNI.

The bundled FP32 model is quantized with the project's recipe (Int8Config's default: 7-bit
weights, the first Conv float) and with the old one (8-bit weights, every Conv INT8), calibrated
on the bundled samples; both run on 40
views of the samples here and under qemu's Haswell (AVX2, no VNNI: tests/qemu.py), through
runtime.model.session.create_session as cifar-run does. The recipe's answers are the same on both
CPUs. The old recipe's answers under qemu are clearly wrong (14 of 40 top-1 labels changed when
this test was written, max |dp| 0.97), which proves the stand-in runs onnxruntime's saturating
non-VNNI kernels; it is judged against FP32 rather than against its own native run, so the test
holds on a CI machine without VNNI too (docs/int8-cpus.md has the figures on the test split).
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import REPO, has_module, requires_qemu
from qemu import python_under_qemu

ASSETS = REPO / "runtime" / "assets"
pytestmark = pytest.mark.skipif(not has_module("onnx"), reason="needs the train extra (onnx, quantization tools)")
requires_bundle = pytest.mark.skipif(not (ASSETS / "model.onnx").is_file(), reason="no FP32 model bundled")

# Measured 0.0 on an AVX-512 VNNI EPYC against qemu's Haswell, here and on 10,000 test images:
# integer sums without saturation are exact, and the float ops around them gave the same bits.
# FP32 differs by up to 1.8e-7 (FMA kernels of another width); were the float stem to differ so,
# an activation could cross one rounding step of the next layer's uint8 input: room for that.
# Saturation moves probabilities by up to 0.97.
MAX_ABS_DP = 1e-3
# Run by the child under qemu, and the same way here: each model's probabilities on the images.
RUN = """
import sys
import numpy as np
from runtime.model.session import create_session
images = np.load(sys.argv[1])
for path in sys.argv[2:]:
    session = create_session(path)
    np.save(path + ".probs.npy", session.run(None, {session.get_inputs()[0].name: images})[0])
"""


def views(batch_nhwc: np.ndarray) -> np.ndarray:
    """(4N, 32, 32, 3): the images, their mirrors, and shifts of 2 pixels down and left."""
    return np.concatenate([batch_nhwc, batch_nhwc[:, :, ::-1], np.roll(batch_nhwc, 2, axis=1),
                           np.roll(batch_nhwc, -2, axis=2)])


def probabilities(path, images: np.ndarray) -> np.ndarray:
    from runtime.model.session import create_session

    session = create_session(path)
    return session.run(None, {session.get_inputs()[0].name: images})[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{"fp32" | "int8" | "int8-old": {"native": (40, 10), and for the INT8 files "qemu": (40, 10)
    and "recipe" (what goes into the file's provenance)}}."""
    import onnx

    from export.convert import save_onnx
    from export.quantize import Int8Config, calibration_from_folder, quantize_int8

    folder = tmp_path_factory.mktemp("int8-cpus")
    samples = calibration_from_folder(ASSETS / "samples", 10)  # (10, 32, 32, 3) float32, 0-255
    images = views(samples)
    np.save(folder / "images.npy", images)
    fp32 = onnx.load(ASSETS / "model.onnx")
    files, recipes = {}, {}
    old = Int8Config(reduce_range=False, float_first_conv=False)
    for name, config in (("int8", Int8Config()), ("int8-old", old)):
        result = quantize_int8(fp32, samples, config)
        files[name], recipes[name] = folder / f"{name}.onnx", result.recipe
        save_onnx(result.model_proto, files[name])
    proc = python_under_qemu(RUN, [str(folder / "images.npy"), *map(str, files.values())], timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = {name: {"native": probabilities(path, images), "qemu": np.load(f"{path}.probs.npy"),
                  "recipe": recipes[name]} for name, path in files.items()}
    out["fp32"] = {"native": probabilities(ASSETS / "model.onnx", images)}
    return out


@requires_qemu
@requires_bundle
def test_the_recipe_gives_the_same_answers_without_vnni(runs):
    native, emulated = runs["int8"]["native"], runs["int8"]["qemu"]
    assert np.array_equal(native.argmax(1), emulated.argmax(1))
    assert np.abs(native - emulated).max() <= MAX_ABS_DP
    fp32 = runs["fp32"]["native"].argmax(1)
    assert np.mean(emulated.argmax(1) == fp32) >= 0.95  # 40 of 40 when written


@requires_qemu
@requires_bundle
def test_the_recipe_records_its_7_bit_weights(runs):
    recipe = runs["int8"]["recipe"]
    assert recipe["reduce_range"] is True and recipe["weights"] == "QInt8" and recipe["float_first_conv"] is True
    layers = [name.split("/")[-2] for name in recipe["float_layers"]]
    assert layers == ["probabilities_1", "whiten_1"]  # the Softmax, and the stem Conv
    assert recipe["first_conv_weight_bits"] == 11  # so that it sums exactly on every CPU
    assert runs["int8-old"]["recipe"]["reduce_range"] is False


@requires_qemu
@requires_bundle
def test_the_old_recipe_saturates_under_the_stand_in(runs):
    """Without this the first test could pass on a qemu that ran VNNI kernels, or none at all."""
    emulated, fp32 = runs["int8-old"]["qemu"], runs["fp32"]["native"]
    assert np.mean(emulated.argmax(1) == fp32.argmax(1)) <= 0.85, "old recipe agrees with FP32 under qemu"
    assert np.abs(emulated - fp32).max() >= 0.3


def _stem(pre_op: str | None = None):
    """A graph input (1, 32, 32, 3) -> Transpose [-> pre_op] -> Conv "stem" with 24 outputs of 2x2x3."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = rng.normal(0, 0.3, (24, 3, 2, 2)).astype(np.float32)
    bias = rng.normal(0, 2, 24).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2])]
    if pre_op:
        nodes.append(helper.make_node(pre_op, ["t"], ["p"]))
    nodes.append(helper.make_node("Conv", ["p" if pre_op else "t", "w", "b"], ["y"], name="stem"))
    graph = helper.make_graph(nodes, "stem", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 32, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")])
    return helper.make_model(graph), weights, bias


def _sums_in_order(weights: np.ndarray, bias: np.ndarray, patches: np.ndarray, reverse: bool) -> np.ndarray:
    """(N, 24) float32: bias plus each product, added one at a time, first to last or last to first."""
    terms = patches[:, None, :] * weights.reshape(len(weights), -1)[None]  # (N, 24, 12) float32
    order = range(terms.shape[-1] - 1, -1, -1) if reverse else range(terms.shape[-1])
    total = np.broadcast_to(bias, terms.shape[:2]).astype(np.float32)
    for k in order:
        total = total + terms[..., k]
    return total


def test_the_float_first_conv_sums_exactly_in_any_order():
    """On raw 0-255 pixels: so the float stem gives the same bits on every CPU, FMA or not."""
    from onnx import numpy_helper

    from export.quantize import exact_first_conv

    model, weights, bias = _stem()
    assert exact_first_conv(model, "stem") == 11  # 23 - 8 input bits - ceil(log2(12 + 1))
    rounded_w, rounded_b = (numpy_helper.to_array(init) for init in model.graph.initializer)
    assert np.abs(rounded_w - weights).max() <= np.abs(weights).max() * 2.0 ** -11
    patches = np.random.default_rng(1).integers(0, 256, (2000, 12)).astype(np.float32)
    exact = rounded_b + (patches[:, None, :].astype(np.float64) * rounded_w.reshape(24, -1)).sum(-1)
    for reverse in (False, True):
        assert np.array_equal(_sums_in_order(rounded_w, rounded_b, patches, reverse), exact)
    # The weights as trained are not: the order of the sum shows in the last bits.
    assert not np.array_equal(_sums_in_order(weights, bias, patches, False),
                              _sums_in_order(weights, bias, patches, True))


def test_a_first_conv_on_anything_but_the_input_is_left_as_it_is():
    from onnx import numpy_helper

    from export.quantize import exact_first_conv

    model, weights, _ = _stem(pre_op="Relu")
    assert exact_first_conv(model, "stem") is None
    assert np.array_equal(numpy_helper.to_array(model.graph.initializer[0]), weights)
