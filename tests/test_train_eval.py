"""train.evaluate and cifar-eval: the report, its figures and the PNGs."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import requires_tf

from runtime.model.confidence import ECE_BINS, confidence_figures, reliability

PNG = b"\x89PNG\r\n\x1a\n"
ECE_LINE = re.compile(r"^confidence (\d\.\d{3}) mean top-1; ECE (\d\.\d{3}) \((\d+) bins\); NLL (\d+\.\d{3})$",
                      re.MULTILINE)


def assert_calibration(saved: dict, probs: np.ndarray, labels: np.ndarray, out: Path):
    """report.json's calibration and reliability agree with ``probs``, recomputed by hand where
    it is short, and reliability.png is a real figure."""
    from PIL import Image

    cal = saved["calibration"]
    assert cal["images"] == len(labels) and cal["accuracy"] == pytest.approx(saved["accuracy"], abs=1e-6)
    assert cal["mean_confidence"] == pytest.approx(probs.max(1).mean(), abs=1e-5)
    assert cal["nll"] == pytest.approx(-np.mean(np.log(probs[np.arange(len(labels)), labels])), abs=1e-4)
    assert cal["ece"] == pytest.approx(confidence_figures(probs, labels).ece, abs=1e-5)
    bins = saved["reliability"]
    assert len(bins) == ECE_BINS and sum(b["count"] for b in bins) == len(labels)
    assert [b["count"] for b in bins] == [b.count for b in reliability(probs, labels)]
    # ECE is the count-weighted gap of the saved bins.
    assert cal["ece"] == pytest.approx(sum(b["count"] * abs(b["accuracy"] - b["confidence"])
                                           for b in bins if b["count"]) / len(labels), abs=1e-5)
    assert all(b["confidence"] is None and b["accuracy"] is None for b in bins if not b["count"])
    png = out / "reliability.png"
    assert png.read_bytes()[:8] == PNG
    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        assert im.format == "PNG" and 400 <= im.width <= 1200 and 400 <= im.height <= 1200
        assert len(im.getcolors(1 << 16) or range(1 << 16)) > 8  # drawn, not blank


@pytest.fixture
def tiny_run(folder_dataset, tmp_path):
    from train.config import TrainConfig
    from train.fit import fit

    fit(TrainConfig(model="tiny", epochs=2, batch_size=16, val_images=10, seed=1), out=tmp_path / "run",
        data=folder_dataset, quiet=True, log=lambda s: None)
    return tmp_path / "run"


@requires_tf
def test_evaluate_keras_report(tiny_run, folder_dataset, tmp_path):
    from train.data import load_cifar10
    from train.evaluate import evaluate, load_keras_model

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
    for m in saved["per_class"].values():
        assert 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1 and m["support"] == 2
    for png in ("confusion.png", "grid.png", "reliability.png"):
        assert (tmp_path / "eval" / png).read_bytes()[:8] == PNG
    assert report.files["reliability"] == str(tmp_path / "eval" / "reliability.png")
    assert_calibration(saved, probs, data.y_test, tmp_path / "eval")


@requires_tf
def test_cifar_eval_cli_prints_table(tiny_run, folder_dataset, tmp_path):
    from train.eval_cli import main

    result = CliRunner().invoke(main, [str(tiny_run / "model.keras"), "--data", str(folder_dataset),
                                       "--out", str(tmp_path / "e"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and "precision" in result.output and "airplane" in result.output
    saved = json.loads((tmp_path / "e" / "report.json").read_text())
    # The calibration line follows the accuracy line and prints report.json's figures.
    lines = result.output.splitlines()
    line = ECE_LINE.search(result.output)
    assert line, result.output
    assert lines.index(line.group(0)) == next(i for i, s in enumerate(lines) if s.startswith("accuracy")) + 1
    confidence, ece, bins, nll = line.groups()
    cal = saved["calibration"]
    assert (confidence, ece, int(bins), nll) == (f"{cal['mean_confidence']:.3f}", f"{cal['ece']:.3f}", ECE_BINS,
                                                 f"{cal['nll']:.3f}")
    assert str(tmp_path / "e" / "reliability.png") in result.output
    assert (tmp_path / "e" / "reliability.png").is_file()
    # What --min-confidence keeps, one line per threshold, as report.json records it.
    assert [r["threshold"] for r in saved["selective"]] == [0.5, 0.7, 0.9]
    for row in saved["selective"]:
        right = "n/a" if row["accuracy"] is None else f"{100 * row['accuracy']:.1f}%"
        assert (f"--min-confidence {row['threshold']:g}: {100 * row['coverage']:.1f}% of images labelled, "
                f"{right} of them right") in lines


def test_evaluate_onnx_through_the_runtime(folder_dataset, tmp_path):
    from runtime_models import reference_probabilities

    from train.data import load_cifar10
    from train.evaluate import evaluate

    model = Path(__file__).parent / "data" / "tiny_contract.onnx"
    report = evaluate(model, data=folder_dataset, out=tmp_path / "e", quiet=True)
    assert report.images == 20 and sum(map(sum, report.confusion)) == 20
    # Calibration of the probabilities the tiny model computes, in numpy, independently of the runtime.
    data = load_cifar10(folder_dataset)
    probs = reference_probabilities(data.x_test.astype(np.float32))
    saved = json.loads((tmp_path / "e" / "report.json").read_text())
    assert saved["calibration"] == report.calibration and saved["reliability"] == report.reliability
    assert_calibration(saved, probs, data.y_test, tmp_path / "e")


def test_calibration_line_in_the_table():
    from train.evaluate import EvalReport

    bins = [{"low": i / 15, "high": (i + 1) / 15, "count": 0, "confidence": None, "accuracy": None}
            for i in range(15)]
    report = EvalReport(model="m.onnx", data="d", images=10, accuracy=0.9, per_class={}, confusion=[],
                        class_names=[], calibration={"images": 10, "accuracy": 0.9, "mean_confidence": 0.9123,
                                                     "ece": 0.01249, "nll": 0.30051}, reliability=bins)
    lines = report.table().splitlines()
    assert lines[2:4] == ["accuracy  90.00%", "confidence 0.912 mean top-1; ECE 0.012 (15 bins); NLL 0.301"]
    # A report without calibration (built by hand) prints no such line.
    bare = EvalReport(model="m", data="d", images=1, accuracy=1.0, per_class={}, confusion=[], class_names=[])
    assert "ECE" not in bare.table()


def test_reliability_diagram_draws_empty_and_full_bins(tmp_path):
    from PIL import Image

    from train.evaluate import plot_reliability

    probs = np.array([[0.95, 0.05], [0.9, 0.1], [0.55, 0.45], [1.0, 0.0]])
    labels = np.array([0, 1, 1, 0])
    bins = reliability(probs, labels)
    assert sum(b.count == 0 for b in bins) == 12  # most bins empty: drawn as nothing, no error
    plot_reliability(bins, tmp_path / "r.png", "hand-made")
    plot_reliability([{**asdict(b), "count": 0, "confidence": None, "accuracy": None} for b in bins],
                     tmp_path / "empty.png")  # no images at all
    for name in ("r.png", "empty.png"):
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG" and im.size == (600, 650)  # 6 x 6.5 inches at 100 dpi


def test_eval_cli_errors_are_one_line(tmp_path, folder_dataset):
    from train.eval_cli import main

    missing = CliRunner().invoke(main, [str(tmp_path / "nope.keras"), "--data", str(folder_dataset)])
    assert missing.exit_code == 1 and "no such model file" in missing.output
    bogus = tmp_path / "bogus.keras"
    bogus.write_text("not a zip")
    result = CliRunner().invoke(main, [str(bogus), "--data", str(folder_dataset)])
    assert result.exit_code == 1 and "not a Keras model" in result.output
    assert "Traceback" not in result.output + missing.output


def test_cifar_eval_without_matplotlib_prints_the_figures_and_says_why_no_pngs(folder_dataset, tmp_path,
                                                                               monkeypatch):
    # The base install on a device has no matplotlib: the figures come, the PNGs are left out.
    import sys

    from train.eval_cli import main

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    model = Path(__file__).parent / "data" / "tiny_contract.onnx"
    result = CliRunner().invoke(main, [str(model), "--data", str(folder_dataset), "--out", str(tmp_path / "e"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.stdout and "--min-confidence 0.5" in result.stdout
    assert "cifar-eval: no PNGs drawn: matplotlib is not installed" in result.stderr
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == ["report.json"]
    assert f"wrote {tmp_path / 'e' / 'report.json'}" in result.stdout
