"""export.fold: the folded network computes the same function with fewer operators."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import make_images, requires_tf

pytestmark = requires_tf


def _randomize_batchnorm(model, seed=0):
    """Trained-looking BatchNorm statistics, so folding them is not a no-op."""
    import keras

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 1, n))
            layer.moving_variance.assign(rng.uniform(0.3, 3, n))
            layer.beta.assign(rng.normal(0, 0.5, n))
            if layer.scale:
                layer.gamma.assign(rng.uniform(0.5, 2, n) * np.where(np.arange(n) % 2, -1, 1))
    return model


def _same_function(original, folded, images):
    x = images.astype(np.float32)
    p0, p1 = original.predict(x, verbose=0), folded.predict(x, verbose=0)
    assert np.abs(p0 - p1).max() < 1e-5
    assert np.array_equal(p0.argmax(1), p1.argmax(1))


def _types(model):
    return [type(layer).__name__ for layer in model.layers]


@pytest.mark.parametrize("name", ["tiny", "default"])
def test_registry_models_fold_to_convolutions_and_pools(name):
    from export.fold import fold_for_inference
    from train.models import build_model

    images, _ = make_images(64)
    kw = {"widths": (8, 16, 16)} if name == "default" else {}
    model = _randomize_batchnorm(build_model(name, train_images=images, **kw))
    folded, applied = fold_for_inference(model)
    _same_function(model, folded, images)
    assert not {"BatchNormalization", "Rescaling"} & set(_types(folded))
    assert "folded temperature into logits" in applied
    if name == "default":  # valid-padded stem: the normalization goes into it; ReLUs move before pools
        assert "Normalization" not in _types(folded)
        assert "folded normalize into whiten" in applied and "moved g0_relu1 before g0_pool" in applied
        types = _types(folded)
        for i, t in enumerate(types):
            if t == "MaxPooling2D":
                assert types[i - 1] == "ReLU" and types[i - 2] == "Conv2D"
    else:  # tiny's first conv pads with zeros: folding the normalization would change the borders
        assert "Normalization" in _types(folded)


def test_a_negative_batchnorm_scale_does_not_cross_a_max_pool():
    import keras

    from export.fold import fold_for_inference

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="c")(inputs)
    x = keras.layers.MaxPooling2D(2, name="p")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)  # with gamma: some scales negative below
    x = keras.layers.ReLU(name="r")(x)
    x = keras.layers.GlobalAveragePooling2D(name="g")(x)
    outputs = keras.layers.Dense(3, name="d")(x)
    model = _randomize_batchnorm(keras.Model(inputs, outputs))
    folded, applied = fold_for_inference(model)
    assert not any("before p" in step for step in applied)  # max(-x) != -max(x)
    _same_function(model, folded, np.random.default_rng(1).integers(0, 256, (16, 8, 8, 3)))


def test_a_branching_model_is_left_as_it_is():
    import keras

    from export.fold import fold_for_inference

    inputs = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(3, 3, padding="same")(inputs)
    x = keras.layers.Add()([inputs, a])
    x = keras.layers.BatchNormalization()(x)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    folded, applied = fold_for_inference(model)
    assert folded is model and applied == []


def test_export_records_the_folds_and_no_fold_converts_as_trained(tiny_keras, tmp_path):
    import onnx

    from export import ExportConfig, export_model

    folded = export_model(tiny_keras, ExportConfig(quiet=True), output=tmp_path / "f.onnx", log=None)
    plain = export_model(tiny_keras, ExportConfig(quiet=True, fold=False), output=tmp_path / "p.onnx", log=None)
    assert folded.passed and plain.passed
    assert folded.metadata["fp32"]["provenance"]["folded"] and plain.metadata["fp32"]["provenance"]["folded"] == []
    ops = [{n.op_type for n in onnx.load(tmp_path / name).graph.node} for name in ("f.onnx", "p.onnx")]
    assert len(onnx.load(tmp_path / "f.onnx").graph.node) < len(onnx.load(tmp_path / "p.onnx").graph.node)
    assert "Mul" in ops[1]
