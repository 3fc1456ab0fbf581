"""Parity failures are detected: a perturbed ONNX model, a threshold the export cannot meet."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from helpers import requires_tf


def test_compare_figures():
    from export.parity import Thresholds, compare

    ref = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], np.float32)
    cand = np.array([[0.8, 0.2], [0.2, 0.8], [0.4, 0.6]], np.float32)
    entry = compare(ref, cand, np.array([0, 1, 1]), Thresholds(min_agreement=0.9, max_abs_diff=0.05),
                    variant="fp32", file="x.onnx", data="d")
    assert entry.max_abs_diff == pytest.approx(0.2) and entry.top1_agreement == pytest.approx(2 / 3)
    assert entry.reference_accuracy == pytest.approx(200 / 3) and entry.candidate_accuracy == 100.0
    assert not entry.passed and len(entry.failures) == 2


def test_synthetic_inputs_are_fixed():
    from export.parity import synthetic_inputs

    a, b = synthetic_inputs(), synthetic_inputs()
    assert a.batch_nhwc.shape == (320, 32, 32, 3) and a.batch_nhwc.dtype == np.float32
    assert np.array_equal(a.batch_nhwc, b.batch_nhwc) and a.labels is None
    assert 0 <= a.batch_nhwc.min() and a.batch_nhwc.max() <= 255


@pytest.fixture
def perturbed(exported, tmp_path):
    """The exported FP32 model with its first conv kernel scaled by 1.5: valid, but wrong."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(exported.onnx_paths["fp32"]))
    init = next(i for i in model.graph.initializer if numpy_helper.to_array(i).ndim == 4)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5, init.name))
    path = tmp_path / "perturbed.onnx"
    onnx.save(model, str(path))
    return path


@requires_tf
def test_perturbed_onnx_is_detected(tiny_keras, exported, perturbed, small_data):
    from export import check_parity

    report = check_parity(tiny_keras, [exported.onnx_paths["fp32"], perturbed], data=small_data, quiet=True)
    good, bad = report.entries
    assert good.passed and not bad.passed
    assert bad.max_abs_diff > 1e-4 and any("max abs diff" in f for f in bad.failures)


@requires_tf
def test_parity_cli_exit_code_and_json(tiny_keras, exported, perturbed, small_data, tmp_path):
    from export.parity_cli import main

    out = tmp_path / "report.json"
    result = CliRunner().invoke(main, [str(tiny_keras), str(perturbed), "--data", str(small_data),
                                       "--json-out", str(out), "-q"])
    assert result.exit_code == 4, result.output
    assert "FAIL" in result.output and "cifar-parity: error: parity check failed" in result.output
    assert "Traceback" not in result.output
    assert json.loads(out.read_text())["passed"] is False

    ok = CliRunner().invoke(main, [str(exported.onnx_paths["fp32"]), str(exported.onnx_paths["fp32"]), "-q"])
    assert ok.exit_code == 0, ok.output
    assert "synthetic" in ok.output


@requires_tf
def test_export_threshold_violation_writes_report_then_exits_4(tiny_keras, tmp_path):
    from export.cli import main

    out = tmp_path / "m.onnx"
    # FP16 differs from FP32 by ~1e-4 at least; a zero tolerance must fail.
    result = CliRunner().invoke(main, [str(tiny_keras), "-o", str(out), "--fp16", "--fp16-max-abs-diff", "0", "-q"])
    assert result.exit_code == 4, result.output
    assert "FAIL" in result.output and "were written but did not pass" in result.output
    assert "Traceback" not in result.output
    report = json.loads((tmp_path / "m.parity.json").read_text())
    assert report["passed"] is False and [e["passed"] for e in report["entries"]] == [True, False]
    assert out.exists() and (tmp_path / "m-fp16.onnx").exists()
