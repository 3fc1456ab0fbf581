"""airbench's three recipe details: the alternating flip, the whitening bias trained for the
first epochs only (the whitening kernel never), and weight decay on BatchNorm biases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import make_images, requires_tf


def test_alternating_flips_invert_every_other_epoch():
    from train.augment import alternating_flips

    even, odd, again = (alternating_flips(1000, seed=5, epoch=e) for e in (0, 1, 2))
    assert np.array_equal(even, again) and np.array_equal(odd, ~even)
    assert 400 < even.sum() < 600  # a random half
    assert not np.array_equal(even, alternating_flips(1000, seed=6, epoch=0))


def test_augment_epoch_mirrors_exactly_the_masked_images():
    from train.augment import augment_epoch

    x, _ = make_images(6)
    mask = np.array([True, False, True, False, False, True])
    out = augment_epoch(x, np.random.default_rng(0), translate=0, flip=mask)
    assert np.array_equal(out[mask], x[mask, :, ::-1]) and np.array_equal(out[~mask], x[~mask])
    with pytest.raises(ValueError, match="flip mask"):
        augment_epoch(x, np.random.default_rng(0), translate=0, flip=mask[:3])


def test_old_run_configs_load_with_the_recipe_they_trained_with(tmp_path):
    from train.config import TrainConfig

    saved = json.loads(TrainConfig().to_json())
    for field in ("alternate_flip", "whiten_bias_epochs", "bias_decay"):
        del saved[field]
    (tmp_path / "config.json").write_text(json.dumps({"config": saved}))
    old = TrainConfig.load(tmp_path / "config.json")
    assert (old.alternate_flip, old.whiten_bias_epochs, old.bias_decay) == (False, 0, False)
    (tmp_path / "config.json").write_text(TrainConfig().to_json())
    assert TrainConfig.load(tmp_path / "config.json") == TrainConfig()


@requires_tf
def test_whitening_kernel_stays_fixed_and_its_bias_trains_only_at_first(tmp_path):
    from train.config import TrainConfig
    from train.data import ImageDataset
    from train.fit import FitControl, fit
    from train.quiet_import import import_keras

    keras = import_keras()
    x, y = make_images(256, seed=1)
    xt, yt = make_images(40, seed=2)
    data = ImageDataset(x, y, xt, yt, tuple(f"c{i}" for i in range(10)), "generated")
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            layer = self.model.get_layer("whiten")
            seen.append((layer.kernel.numpy().copy(), layer.bias.numpy().copy()))

    # quick: the whitening stem; 4 steps per epoch, the bias trains for the first epoch only.
    config = TrainConfig.for_model("quick", epochs=3, batch_size=64, val_images=16, seed=0,
                                   whiten_bias_epochs=1, precision="float32", lookahead=False)
    fit(config, out=tmp_path / "run", data=data, quiet=True, log=lambda s: None,
        control=FitControl(callbacks=[Record()]))
    kernels, biases = zip(*seen)
    assert len(seen) == 12
    assert all(np.array_equal(k, kernels[0]) for k in kernels)
    assert np.abs(biases[3]).max() > 0 and not np.allclose(biases[0], biases[3])  # trained in epoch 1
    assert all(np.array_equal(b, biases[3]) for b in biases[4:])  # then frozen, momentum and all


@requires_tf
def test_batchnorm_biases_are_decayed_like_kernels_per_step():
    from train.models import build_model

    x, _ = make_images(64)
    model = build_model("quick", train_images=x, weight_decay=1e-3, bias_weight_decay=1e-3 / 64)
    bn = model.get_layer("g0_bn1")
    assert bn.beta_regularizer is not None and float(bn.beta_regularizer.l2) == pytest.approx(1e-3 / 64 / 2)
    plain = build_model("quick", train_images=x, weight_decay=1e-3)
    assert plain.get_layer("g0_bn1").beta_regularizer is None
