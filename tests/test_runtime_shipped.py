"""The shipped model: the bundled ONNX files meet the issue's figures on the full test split,
through the runtime alone (this file also runs in the base-only environment)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import REAL_DATA, REPO, requires_real_data

ASSETS = REPO / "runtime" / "assets"
SHIPPED = REPO / "train" / "shipped" / "default"

requires_bundle = pytest.mark.skipif(not (ASSETS / "model.onnx").is_file(),
                                     reason="no model bundled in runtime/assets yet (run scripts/ship.py)")


def _probabilities(model_path, x) -> np.ndarray:
    from runtime.classifier import Classifier

    clf = Classifier(model_path, provider="cpu")
    return np.concatenate([clf.run(x[i:i + 1000])[0] for i in range(0, len(x), 1000)])


@pytest.fixture(scope="module")
def test_split():
    from train.data import load_cifar10

    data = load_cifar10(REAL_DATA, splits=("test",))
    assert len(data.x_test) == 10_000
    return data.x_test, data.y_test


@pytest.fixture(scope="module")
def figures(test_split):
    """Accuracy and calibration of each shipped file on the full test split, through the runtime."""
    from runtime.calibration import calibration

    x, y = test_split
    files = {"fp32": ASSETS / "model.onnx", "int8": ASSETS / "model-int8.onnx", "fp32+flip": SHIPPED / "model-flip.onnx"}
    return {name: calibration(_probabilities(path, x), y) for name, path in files.items()}


# The targets of the calibration-and-accuracy issue (docs/shipped-model.md has the figures).
FP32_TARGET = 0.900  # single view
INT8_MAX_DROP = 0.002  # INT8 at most 0.2 point below FP32
FLIP_TARGET = 0.908  # the mirror-view twin
ECE_TARGET = 0.02  # bundled FP32 and INT8


@requires_bundle
@requires_real_data
def test_figures_match_the_bundled_report(figures):
    # The parity report bundled beside them says the same (the shipped-model figures are built from it).
    report = json.loads((ASSETS / "parity.json").read_text())
    recorded = {e["variant"] + ("+flip" if e.get("views") == "flip" else ""): e for e in report["entries"]}
    for name, measured in figures.items():
        assert recorded[name]["candidate_accuracy"] == pytest.approx(100 * measured.accuracy, abs=0.011)
        assert recorded[name]["calibration"]["test"]["after"]["ece"] == pytest.approx(measured.ece, abs=1e-3)


@requires_bundle
@requires_real_data
def test_bundled_fp32_reaches_the_target_and_int8_stays_close(figures):
    fp32, int8 = figures["fp32"].accuracy, figures["int8"].accuracy
    assert fp32 >= FP32_TARGET, f"FP32 {100 * fp32:.2f}% is below {100 * FP32_TARGET:.1f}%"
    assert fp32 - int8 <= INT8_MAX_DROP, f"INT8 {100 * int8:.2f}% is more than 0.2 point below FP32 {100 * fp32:.2f}%"


@requires_bundle
@requires_real_data
def test_the_flip_twin_reaches_its_target(figures):
    assert figures["fp32+flip"].accuracy >= FLIP_TARGET, f"{100 * figures['fp32+flip'].accuracy:.2f}%"


@requires_bundle
@requires_real_data
def test_bundled_confidences_are_calibrated(figures):
    for name in ("fp32", "int8"):
        assert figures[name].ece <= ECE_TARGET, f"{name}: ECE {figures[name].ece:.3f}"
        # Confident when right as often as it says: mean confidence within 2 points of accuracy.
        assert abs(figures[name].mean_confidence - figures[name].accuracy) <= ECE_TARGET


@requires_bundle
def test_bundled_model_size_and_parameters():
    assert (ASSETS / "model-int8.onnx").stat().st_size < 1_000_000
    config = json.loads((SHIPPED / "config.json").read_text())
    assert config["parameters"] < 1_000_000


@requires_bundle
def test_cifar_run_with_no_arguments_gets_the_samples_right():
    env = {k: v for k, v in os.environ.items() if k != "CIFAR_EDGE_ASSETS"}
    proc = subprocess.run([sys.executable, "-m", "runtime.cli", "--json"], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert len(rows) == 10
    for row in rows:
        expected = os.path.splitext(os.path.basename(row["file"]))[0]
        assert row["label"] == expected, row
    assert "model-int8.onnx" in proc.stderr  # INT8 is the default bundled model
