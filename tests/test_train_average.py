"""train.average: the mean of a run's last epochs, with BatchNorm statistics measured again."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")


def _model():
    import keras

    inputs = keras.Input((4,))
    x = keras.layers.BatchNormalization(momentum=0.6, name="bn")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(x))


def test_average_is_the_mean_of_the_snapshots_and_batchnorm_is_measured_on_the_images(tmp_path):
    from train.average import average_tail, snapshot_files, snapshot_path

    model = _model()
    rng = np.random.default_rng(0)
    saved = []
    for epoch in (3, 4, 5):
        weights = [rng.normal(size=w.shape).astype(np.float32) for w in model.get_weights()]
        model.set_weights(weights)
        path = snapshot_path(tmp_path, epoch)
        path.parent.mkdir(exist_ok=True)
        model.save_weights(path)
        saved.append(weights)
    files = snapshot_files(tmp_path)
    assert [f.name for f in files] == ["epoch-003.weights.h5", "epoch-004.weights.h5", "epoch-005.weights.h5"]

    average_tail(model, files[-2:], images=None)
    for got, a, b in zip(model.get_weights(), saved[1], saved[2]):
        np.testing.assert_allclose(got, (a + b) / 2, rtol=1e-6)

    # Four equal batches of 500: the moving mean becomes the mean over all 2,000 images and the
    # moving variance the mean of the batch variances; the weights that are trained stay averaged.
    images = rng.normal(loc=[1, -2, 3, 0], scale=[1, 2, 0.5, 3], size=(2000, 4)).astype(np.float32)
    average_tail(model, files, images=images)
    bn = model.get_layer("bn")
    np.testing.assert_allclose(bn.moving_mean.numpy(), images.mean(0), atol=1e-4)
    batch_var = np.mean([images[i:i + 500].var(0) for i in range(0, 2000, 500)], axis=0)
    np.testing.assert_allclose(bn.moving_variance.numpy(), batch_var, rtol=1e-4)
    mean3 = [(a + b + c) / 3 for a, b, c in zip(*saved)]
    np.testing.assert_allclose(model.get_layer("head").get_weights()[0], mean3[-2], rtol=1e-6)
    np.testing.assert_allclose(bn.gamma.numpy(), mean3[0], rtol=1e-6)
    assert bn.momentum == 0.6  # put back


def test_no_snapshots_is_one_line(tmp_path):
    from runtime.errors import DataError
    from train.average import snapshot_files

    with pytest.raises(DataError, match=r"no snapshots/epoch-\*.weights.h5 \(a run keeps them with snapshots=N\)"):
        snapshot_files(tmp_path)
