"""Calibration and the mirror view at export: graph rewrites that keep one input and one
output, the temperature fitted on the run's held-out training images, parity that accounts for
both, and the files describing what was baked in."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import make_images, requires_tf

from runtime.model.confidence import confidence_figures, with_temperature

pytestmark = requires_tf


def _session(proto_or_path):
    from runtime.model.session import create_session

    return create_session(proto_or_path if not hasattr(proto_or_path, "SerializeToString")
                          else proto_or_path.SerializeToString())


def _run(session, x):
    return session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})[0]


def _load(path):
    import onnx

    return onnx.load(str(path))


@pytest.mark.parametrize("variant", ["fp32", "int8", "fp16"])
@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_baked_temperature_divides_the_logits_and_keeps_every_label(exported, variant, temperature):
    from export.calibrate import bake_temperature

    x, _ = make_images(12, seed=3)
    proto = _load(exported.onnx_paths[variant])
    before = _run(_session(proto), x)
    session = _session(bake_temperature(proto, temperature))
    after = _run(session, x)
    assert len(session.get_inputs()) == 1 and len(session.get_outputs()) == 1
    tol = 1e-5 if variant != "fp16" else 2e-3
    np.testing.assert_allclose(after, with_temperature(before, temperature), atol=tol)
    assert np.array_equal(after.argmax(1), before.argmax(1))
    if temperature > 1:  # softer: the top class loses probability
        assert np.all(after.max(1) <= before.max(1) + tol)


@pytest.mark.parametrize("variant", ["fp32", "int8", "fp16"])
def test_flip_view_averages_the_image_and_its_mirror_in_one_run(exported, variant):
    from export.calibrate import add_flip_view, mirror_average

    proto = _load(exported.onnx_paths[variant])
    plain = _session(proto)
    flip = _session(add_flip_view(proto))
    assert [i.name for i in flip.get_inputs()] == [i.name for i in plain.get_inputs()]
    assert len(flip.get_outputs()) == 1
    for n in (1, 5):
        x, _ = make_images(n, seed=n)
        by_hand = mirror_average(_run(plain, x), _run(plain, x[:, :, ::-1]))
        out = _run(flip, x)
        assert out.shape == (n, 10)
        np.testing.assert_allclose(out, by_hand, atol=1e-5 if variant != "fp16" else 2e-3)
    # A mirror-symmetric image gives exactly the plain model's answer.
    sym = np.concatenate([x[:, :, :16], x[:, :, :16][:, :, ::-1]], axis=2)
    np.testing.assert_allclose(_run(flip, sym), _run(plain, sym), atol=1e-5 if variant != "fp16" else 2e-3)


def test_rewrites_refuse_twice_and_a_model_without_softmax(exported, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from export.calibrate import add_flip_view, bake_temperature
    from runtime.errors import ModelError

    proto = _load(exported.onnx_paths["fp32"])
    with pytest.raises(ModelError, match="already has a calibration"):
        bake_temperature(bake_temperature(proto, 1.5), 1.5)
    with pytest.raises(ModelError, match="already averages"):
        add_flip_view(add_flip_view(proto))
    with pytest.raises(ValueError, match="positive"):
        bake_temperature(proto, 0.0)
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 32, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 32, 3])])
    with pytest.raises(ModelError, match="not a Softmax"):
        bake_temperature(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), 2.0)
    assert onnx.checker.check_model(add_flip_view(bake_temperature(proto, 2.0))) is None


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny model trained 2 epochs in a run folder that holds 40 training images out."""
    from helpers import write_folder_dataset

    from train.config import TrainConfig
    from train.fit import fit

    root = tmp_path_factory.mktemp("calib")
    data = write_folder_dataset(root / "cifar10", n_train=240, n_test=60)
    fit(TrainConfig(model="tiny", epochs=2, batch_size=32, val_images=40, seed=7), out=root / "run", data=data,
        quiet=True, log=lambda s: None)
    return root / "run", data


def test_held_out_images_are_the_ones_the_run_kept_back(trained_run, tmp_path):
    import shutil

    from export.calibrate import held_out_training_images
    from train.data import load_cifar10
    from train.fit import split_validation

    run, data = trained_run
    x, y, described = held_out_training_images(run / "model.keras", data)
    split = split_validation(load_cifar10(data), 40, 7)
    assert np.array_equal(x, split.x_val) and np.array_equal(y, split.y_val) and "40 training images" in described
    lone = tmp_path / "model.keras"  # a model without its run folder
    shutil.copy(run / "model.keras", lone)
    assert held_out_training_images(lone, data)[0] is None and "no config.json" in held_out_training_images(lone, data)[2]
    config = json.loads((run / "config.json").read_text())
    config["config"]["val_images"] = 0
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert "test split" in held_out_training_images(lone, data)[2]


def test_export_calibrates_each_variant_and_parity_accounts_for_it(trained_run, tmp_path):
    from export import ExportConfig, Int8Config, export_model
    from export.parity import DEFAULT_THRESHOLDS
    from export.pipeline import check_parity
    from runtime.model.contract import KEY_CALIBRATION, KEY_VIEWS
    from runtime.model.session import create_session, model_metadata

    run, data = trained_run
    lenient = DEFAULT_THRESHOLDS["int8"].override(max_accuracy_drop=100.0)  # 60 test images
    config = ExportConfig(int8=True, tta="flip", quiet=True, int8_config=Int8Config(calib_images=64),
                          int8_thresholds=lenient)
    result = export_model(run / "model.keras", config, output=tmp_path / "m.onnx", data=data, log=None)
    plain = export_model(run / "model.keras", ExportConfig(int8=True, tta="flip", calibrate=False, quiet=True,
                                                           int8_config=Int8Config(calib_images=64),
                                                           int8_thresholds=lenient),
                         output=tmp_path / "raw" / "m.onnx", data=data, log=None)
    assert set(result.onnx_paths) == {"fp32", "fp32+flip", "int8", "int8+flip"}
    assert result.onnx_paths["int8+flip"].name == "m-int8-flip.onnx"
    x, _ = make_images(30, seed=11)
    for entry, raw_entry in zip(result.report.entries, plain.report.entries):
        assert entry.passed, entry.failures
        cal = entry.calibration
        assert cal["temperature"] > 0 and "40 training images" in cal["fitted_on"]
        assert cal["held_out"]["after"]["nll"] <= cal["held_out"]["before"]["nll"] + 1e-9
        assert cal["test"]["before"]["accuracy"] == cal["test"]["after"]["accuracy"]
        assert raw_entry.calibration is None
        name = entry.label
        meta = model_metadata(create_session(result.onnx_paths[name]), result.onnx_paths[name])
        assert meta.temperature == pytest.approx(cal["temperature"]) and meta.views == entry.views
        stored = json.loads(meta.raw[KEY_CALIBRATION])
        assert "test" not in stored and stored["held_out"] == cal["held_out"]
        assert json.loads(model_metadata(create_session(plain.onnx_paths[name]), plain.onnx_paths[name])
                          .raw[KEY_CALIBRATION]) is None
        assert meta.raw[KEY_VIEWS] == ("flip" if name.endswith("+flip") else "single")
        # Same labels with and without the temperature; the probabilities differ by exactly it.
        ours, theirs = (_run(_session(p.onnx_paths[name]), x) for p in (result, plain))
        assert np.array_equal(ours.argmax(1), theirs.argmax(1))
        np.testing.assert_allclose(ours, with_temperature(theirs, cal["temperature"]), atol=2e-5)
    # cifar-parity against the Keras model applies each candidate's temperature and views.
    report = check_parity(run / "model.keras", [result.onnx_paths["fp32+flip"], result.onnx_paths["fp32"]],
                          data=data, quiet=True)
    assert report.passed and all(e.max_abs_diff < 1e-4 for e in report.entries)
    assert [e.label for e in report.entries] == ["fp32+flip", "fp32"]
    assert "temperature" in report.table() and "fp32+flip" in report.table()


def test_calibration_lowers_ece_on_an_over_confident_model(trained_run, tmp_path):
    """The fitted temperature undoes a deliberate over-confidence: ECE and NLL on the held-out
    images fall, and the temperature is near the factor the logits were inflated by."""
    from export.calibrate import bake_temperature, held_out_training_images
    from runtime.model.confidence import fit_temperature

    run, data = trained_run
    from export import ExportConfig, export_model

    result = export_model(run / "model.keras", ExportConfig(calibrate=False, quiet=True),
                          output=tmp_path / "m.onnx", data=data, log=None)
    x, y, _ = held_out_training_images(run / "model.keras", data)
    proto = _load(result.onnx_paths["fp32"])
    honest_t = fit_temperature(_run(_session(proto), x), y)
    sharp = bake_temperature(proto, 0.25)  # logits x4: over-confident
    probs = _run(_session(sharp), x)
    t = fit_temperature(probs, y)
    assert t == pytest.approx(4 * honest_t, rel=1e-3)
    assert confidence_figures(with_temperature(probs, t), y).nll < confidence_figures(probs, y).nll


def test_cli_options(trained_run, tmp_path):
    from click.testing import CliRunner

    from export.cli import main

    run, data = trained_run
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(main, [str(run / "model.keras"), "-o", str(out), "--data", str(data), "--tta", "flip",
                                       "--no-calibrate", "-q"])
    assert result.exit_code == 0, result.output
    assert out.exists() and out.with_name("m-flip.onnx").exists() and "fp32+flip" in result.output
    assert "temperature" not in result.output and "not calibrated" not in result.output
    bad = CliRunner().invoke(main, [str(run / "model.keras"), "--tta", "crop"])
    assert bad.exit_code == 2 and "crop" in bad.output
