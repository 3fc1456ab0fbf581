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
    from train.models import Architecture, build_model

    images, _ = make_images(64)
    kw = {"architecture": Architecture(widths=(8, 16, 16))} if name == "default" else {}
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


def _batchnorm_model_with_activations(keras, sequential: bool = False):
    """BatchNorm beside Dense/Conv2D layers that carry their own ReLU (a tutorial's style)."""
    L = keras.layers
    layers = [L.Normalization(mean=[120.0] * 3, variance=[3600.0] * 3, name="norm"),
              L.Conv2D(8, 3, activation="relu", name="c1"),  # valid: the normalization folds into it
              L.Conv2D(8, 3, padding="same", use_bias=False, name="c2"), L.BatchNormalization(name="bn"),
              L.ReLU(name="r"), L.MaxPooling2D(name="p"),
              L.Conv2D(8, 3, padding="same", activation="relu", name="c3"), L.BatchNormalization(name="bn2"),
              L.Flatten(name="f"), L.Dense(16, activation="relu", name="d1"),
              L.Dense(4, activation="softmax", name="d2")]
    if sequential:
        return _randomize_batchnorm(keras.Sequential([keras.Input((16, 16, 3)), *layers]))
    x = inputs = keras.Input((16, 16, 3))
    for layer in layers:
        x = layer(x)
    return _randomize_batchnorm(keras.Model(inputs, x))


@pytest.mark.parametrize("sequential", [False, True])
def test_layers_with_their_own_activation_keep_their_trained_weights(sequential):
    """A Dense/Conv2D with activation="relu" was rebuilt from its config, with fresh random
    weights (max |dp| 0.29, top-1 agreement 5%); every layer no rule rewrote is now reused."""
    import keras

    from export.fold import fold_for_inference

    model = _batchnorm_model_with_activations(keras, sequential)
    folded, applied = fold_for_inference(model)
    _same_function(model, folded, np.random.default_rng(2).integers(0, 256, (32, 16, 16, 3)))
    assert applied == ["folded norm into c1", "folded a BatchNorm into c2"]  # bn2 follows a ReLU: kept
    for name in ("c3", "d1", "d2"):
        assert folded.get_layer(name) is model.get_layer(name)  # reused, trained weights and all


def test_a_batchnorm_model_with_activations_exports_folded_and_passes(tmp_path):
    import keras

    from export import ExportConfig, export_model

    path = tmp_path / "bn.keras"
    _batchnorm_model_with_activations(keras).save(path)
    result = export_model(path, ExportConfig(quiet=True, class_names=("a", "b", "c", "d")),
                          output=tmp_path / "bn.onnx", log=None)
    assert result.passed, result.report.table()
    assert result.metadata["fp32"]["provenance"]["folded"] == ["folded norm into c1", "folded a BatchNorm into c2"]
    assert result.report.entries[0].top1_agreement == 1.0 and result.report.entries[0].max_abs_diff < 1e-5
