"""The reference network (airbench94 as published) and its scoring with airbench's test-time
views (train.tta, used by scripts/reference_run.py)."""

from __future__ import annotations

import numpy as np

from helpers import requires_tf
from train.tta import tta_accuracy, tta_views


@requires_tf
def test_airbench94_is_the_published_network():
    import keras

    from train.models import build_model

    images = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    model = build_model("airbench94", train_images=images)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [24, 64, 64, 256, 256, 256, 256]
    activations = [layer for layer in model.layers if isinstance(layer, keras.layers.Activation)]
    assert len(activations) == 7 and all(a.activation is keras.activations.gelu for a in activations)
    assert not any(isinstance(layer, keras.layers.ReLU) for layer in model.layers)
    # PyTorch's count for airbench94 (weights, whitening kernel, BN biases, linear) plus the BN
    # running statistics Keras also counts; the whitening layer has its bias, as in airbench.
    conv = 2 * 2 * 3 * 24 + 24 + 9 * (24 * 64 + 64 * 64 + 64 * 256 + 3 * 256 * 256)
    batchnorm = 3 * (64 + 64 + 256 + 256 + 256 + 256)  # beta, moving mean, moving variance
    assert model.count_params() == conv + batchnorm + 256 * 10


@requires_tf
def test_activation_choice_changes_the_function_not_the_weights():
    import keras

    from train.models import Architecture, build_model

    images = np.random.default_rng(1).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    keras.utils.set_random_seed(0)
    relu = build_model("default", architecture=Architecture(widths=(8, 16, 16)), train_images=images)
    keras.utils.set_random_seed(0)
    gelu = build_model("default", architecture=Architecture(widths=(8, 16, 16), activation="gelu"),
                       train_images=images)
    assert [w.shape for w in relu.get_weights()] == [w.shape for w in gelu.get_weights()]
    gelu.set_weights(relu.get_weights())
    x = images.astype(np.float32)
    assert not np.allclose(relu.predict(x, verbose=0), gelu.predict(x, verbose=0), atol=1e-4)


def test_tta_views_follow_airbench():
    images = np.random.default_rng(2).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    assert len(tta_views(images, 0)) == 1 and len(tta_views(images, 1)) == 2
    for level in (0, 1, 2):  # the weights of a level sum to one
        assert sum(weight for _, weight in tta_views(images, level)) == 1.0
    views = [view for view, _ in tta_views(images, 2)]
    assert len(views) == 6 and all(v.shape == images.shape for v in views)
    np.testing.assert_array_equal(views[1], images[:, :, ::-1])
    # Content moved one pixel down-right, then up-left; reflect padding fills the border.
    np.testing.assert_array_equal(views[2][:, 1:, 1:], images[:, :31, :31])
    np.testing.assert_array_equal(views[2][:, 0, 1:], images[:, 1, :31])
    np.testing.assert_array_equal(views[4][:, :31, :31], images[:, 1:, 1:])
    np.testing.assert_array_equal(views[5], views[4][:, :, ::-1])


class _ColumnModel:
    """Says class 1 (p=0.6) when the left half of an image is the brighter, else class 0 (p=0.9):
    a mirror flips its answer, more confidently, so averaging views is visible."""

    def predict(self, x, batch_size=None, verbose=0):
        brighter_left = x[:, :, :16].mean(axis=(1, 2, 3)) > x[:, :, 16:].mean(axis=(1, 2, 3))
        p1 = np.where(brighter_left, 0.6, 0.1)
        return np.stack([1 - p1, p1], axis=1)


def test_tta_accuracy_weights_the_views():
    images = np.zeros((4, 32, 32, 3), np.uint8)
    images[:, :, :16] = 200
    labels = np.ones(4, np.int64)
    model = _ColumnModel()
    assert tta_accuracy(model, images, labels, 0) == 1.0
    # Image and mirror count half each: 0.5*log(0.4) + 0.5*log(0.9) beats 0.5*log(0.6) + 0.5*log(0.1).
    assert tta_accuracy(model, images, labels, 1) == 0.0
    assert tta_accuracy(model, images, labels, 2) == 0.0
    assert tta_accuracy(model, images[:, :, ::-1], 1 - labels, 1) == 1.0
