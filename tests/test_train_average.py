"""train.average: the mean of a run's last epochs, with BatchNorm statistics measured again."""

from __future__ import annotations

import json

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


def test_a_run_that_averages_ends_with_the_mean_of_its_last_epochs(folder_dataset, tmp_path):
    from train.average import snapshot_files
    from train.config import TrainConfig
    from train.fit import fit, loss_and_accuracy, split_validation
    from train.data import load_dataset
    from train.models import load_keras_model

    run = tmp_path / "run"
    lines = []
    # batch 5: 10 steps an epoch, so each epoch ends on a lookahead step (every 5) and moves.
    config = TrainConfig(model="tiny", batch_size=5, val_images=10, seed=3, epochs=16, average_last=2)
    fit(config, out=run, data=folder_dataset, quiet=True, log=lines.append)
    files = snapshot_files(run)
    assert [f.name for f in files] == ["epoch-015.weights.h5", "epoch-016.weights.h5"]
    assert lines[-1].startswith("epoch  16/16") and lines[-1].endswith("(the mean of the last 2 epochs)")

    model, snapshot = load_keras_model(run / "model.keras"), load_keras_model(run / "model.keras")
    means = []
    for f in files:
        snapshot.load_weights(f)
        means.append(snapshot.get_weights())
    for weight, got, a, b in zip(model.weights, model.get_weights(), *means):
        # Every weight, BatchNorm's moving statistics included, is the mean of the two epochs'.
        np.testing.assert_allclose(got, (a + b) / 2, rtol=1e-5, atol=1e-7, err_msg=weight.path)
    assert not all(np.array_equal(a, b) for a, b in zip(*means))  # the two epochs differ

    # The last history row and state.json describe model.keras: the average.
    data = load_dataset(folder_dataset, quiet=True)
    split = split_validation(data, 10, 3)
    _, val_acc = loss_and_accuracy(model, split.x_val, split.y_val)
    state = json.loads((run / "state.json").read_text())
    assert state["best_val_acc"] == pytest.approx(val_acc) and state["finished"]


def test_the_average_reaches_back_at_most_an_eighth_of_the_run():
    from train.config import TrainConfig

    assert TrainConfig().averaged_epochs == 8  # the recipe: 8 of 100
    assert TrainConfig(epochs=40).averaged_epochs == 5
    assert TrainConfig(epochs=15).averaged_epochs == 0  # an eighth is 1 epoch: no average
    assert TrainConfig(epochs=70, average_last=1).averaged_epochs == 0
    assert TrainConfig.for_model("quick").averaged_epochs == 0
    assert TrainConfig.for_model("default", init="shipped").averaged_epochs == 0


def test_a_run_stopped_in_its_last_epoch_averages_the_snapshot_saved_before_the_stop(folder_dataset, tmp_path):
    import keras

    import train.fit as fit_mod
    from train.average import snapshot_path
    from train.config import TrainConfig
    from train.models import load_keras_model

    run = tmp_path / "run"
    config = TrainConfig(model="tiny", batch_size=5, val_images=10, seed=3, epochs=16, average_last=2)
    stop = fit_mod.StopRequest()

    class StopInTheLastEpoch(keras.callbacks.Callback):
        calls = 0

        def on_train_batch_end(self, batch, logs=None):
            StopInTheLastEpoch.calls += 1
            if StopInTheLastEpoch.calls == 15 * 10 + 3:  # 10 steps an epoch: epoch 16, step 3
                stop.set()

    with pytest.raises(fit_mod.Interrupted, match="epoch 16 at step 3/10"):
        fit_mod.fit(config, out=run, data=folder_dataset, quiet=True, log=lambda s: None,
                    control=fit_mod.FitControl(stop=stop, callbacks=[StopInTheLastEpoch()]))
    before = snapshot_path(run, 15).read_bytes()
    assert not snapshot_path(run, 16).exists()

    fit_mod.fit(config, out=run, resume=True, quiet=True, log=lambda s: None)
    assert snapshot_path(run, 15).read_bytes() == before  # not trained again, not written again
    model, snapshot = load_keras_model(run / "model.keras"), load_keras_model(run / "model.keras")
    means = []
    for epoch in (15, 16):
        snapshot.load_weights(snapshot_path(run, epoch))
        means.append(snapshot.get_weights())
    for got, a, b in zip(model.get_weights(), *means):
        np.testing.assert_allclose(got, (a + b) / 2, rtol=1e-5, atol=1e-7)
