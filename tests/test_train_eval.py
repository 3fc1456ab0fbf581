"""train.evaluate and cifar-eval: the report, its figures and the PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from helpers import requires_tf

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def tiny_run(folder_dataset, tmp_path):
    from train.config import TrainConfig
    from train.fit import fit

    fit(TrainConfig(model="tiny", epochs=2, batch_size=16, val_images=10, seed=1), out=tmp_path / "run",
        data=folder_dataset, quiet=True, log=lambda s: None)
    return tmp_path / "run"


@requires_tf
def test_evaluate_keras_report(tiny_run, folder_dataset, tmp_path):
    from train.evaluate import evaluate, load_keras_model
    from train.data import load_cifar10

    report = evaluate(tiny_run / "model.keras", data=folder_dataset, out=tmp_path / "eval", quiet=True)
    saved = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert saved["images"] == 20 and saved["accuracy"] == report.accuracy
    confusion = np.array(saved["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == 20
    assert np.trace(confusion) / 20 == pytest.approx(report.accuracy)
    # The report agrees with the model's own predictions.
    data = load_cifar10(folder_dataset)
    probs = load_keras_model(tiny_run / "model.keras").predict(data.x_test.astype(np.float32), verbose=0)
    assert report.accuracy == pytest.approx(float(np.mean(probs.argmax(1) == data.y_test)))
    for name, m in saved["per_class"].items():
        assert 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1 and m["support"] == 2
    for png in ("confusion.png", "grid.png"):
        assert (tmp_path / "eval" / png).read_bytes()[:8] == PNG


@requires_tf
def test_cifar_eval_cli_prints_table(tiny_run, folder_dataset, tmp_path):
    from train.eval_cli import main

    result = CliRunner().invoke(main, [str(tiny_run / "model.keras"), "--data", str(folder_dataset),
                                       "--out", str(tmp_path / "e"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and "precision" in result.output and "airplane" in result.output
    assert (tmp_path / "e" / "report.json").is_file()


def test_evaluate_onnx_through_the_runtime(folder_dataset, tmp_path):
    from train.evaluate import evaluate

    model = Path(__file__).parent / "data" / "tiny_contract.onnx"
    report = evaluate(model, data=folder_dataset, out=tmp_path / "e", quiet=True)
    assert report.images == 20 and sum(map(sum, report.confusion)) == 20


def test_eval_cli_errors_are_one_line(tmp_path, folder_dataset):
    from train.eval_cli import main

    missing = CliRunner().invoke(main, [str(tmp_path / "nope.keras"), "--data", str(folder_dataset)])
    assert missing.exit_code == 1 and "no such model file" in missing.output
    bogus = tmp_path / "bogus.keras"
    bogus.write_text("not a zip")
    result = CliRunner().invoke(main, [str(bogus), "--data", str(folder_dataset)])
    assert result.exit_code == 1 and "not a Keras model" in result.output
    assert "Traceback" not in result.output + missing.output
