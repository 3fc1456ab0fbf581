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
    from runtime.model.classifier import Classifier

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
    from runtime.model.confidence import confidence_figures

    x, y = test_split
    files = {"fp32": ASSETS / "model.onnx", "int8": ASSETS / "model-int8.onnx", "fp32+flip": SHIPPED / "model-flip.onnx"}
    return {name: confidence_figures(_probabilities(path, x), y) for name, path in files.items()}


# The targets of the calibration-and-accuracy issue, all met by the model bundled now (the
# 100-epoch run; docs/shipped-model.md#targets has the figures, built from the bundled reports).
FP32_TARGET = 0.900  # single view; bundled: 90.47%
INT8_MAX_DROP = 0.002  # INT8 at most 0.2 point below FP32; bundled: 0.12 point
FLIP_TARGET = 0.908  # the mirror-view twin; bundled: 90.93%
ECE_TARGET = 0.02  # bundled FP32 and INT8; bundled: 0.019 and 0.016 (0.164 before calibration)


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
def test_bundled_fp32_reaches_the_target(figures):
    assert figures["fp32"].accuracy >= FP32_TARGET, f"FP32 {100 * figures['fp32'].accuracy:.2f}%"


@requires_bundle
@requires_real_data
def test_int8_stays_within_the_target_of_fp32(figures):
    drop = figures["fp32"].accuracy - figures["int8"].accuracy
    assert drop <= INT8_MAX_DROP, f"INT8 is {100 * drop:.2f} point below FP32"


@requires_bundle
@requires_real_data
def test_the_flip_twin_reaches_its_target(figures):
    assert figures["fp32+flip"].accuracy >= FLIP_TARGET, f"{100 * figures['fp32+flip'].accuracy:.2f}%"
    gain = figures["fp32+flip"].accuracy - figures["fp32"].accuracy
    assert gain >= 0.004, f"the mirror view adds {100 * gain:.2f} point"


@requires_bundle
@requires_real_data
def test_bundled_confidences_meet_the_ece_target(figures):
    # ECE about a ninth of the uncalibrated 0.164.
    for name in ("fp32", "int8"):
        assert figures[name].ece <= ECE_TARGET, f"{name}: ECE {figures[name].ece:.4f}"
        # Calibrated: confident about as often as right.
        assert abs(figures[name].mean_confidence - figures[name].accuracy) <= 0.02, name


SHIPPED_ONNX = sorted([*ASSETS.glob("*.onnx"), *SHIPPED.glob("*.onnx")])


@requires_bundle
@pytest.mark.parametrize("path", SHIPPED_ONNX, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_file_passes_its_self_check_here(path):
    from runtime.model.classifier import Classifier

    result = Classifier(path, provider="cpu").self_check  # refused (SelfCheckError) if it fails
    assert result.status == "passed" and result.images == 8 and result.labels_differ == 0, result


@requires_bundle
def test_bundled_model_size_and_parameters():
    assert (ASSETS / "model-int8.onnx").stat().st_size < 1_000_000
    config = json.loads((SHIPPED / "config.json").read_text())
    assert config["parameters"] < 1_000_000


@requires_bundle
def test_cifar_run_with_no_arguments_gets_the_samples_right():
    env = {k: v for k, v in os.environ.items() if k != "CIFAR_EDGE_ASSETS"}
    proc = subprocess.run([sys.executable, "-m", "runtime.cli.run", "--json"], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert len(rows) == 10
    for row in rows:
        expected = os.path.splitext(os.path.basename(row["file"]))[0]
        assert row["label"] == expected, row
    assert "model-int8.onnx (int8" in proc.stderr and "self-check passed" in proc.stderr  # INT8, checked here
