"""One convention for a failed threshold (a returned report; ParityFailed carries it) and one sign
for accuracy differences (candidate minus reference: a fall is negative)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from helpers import requires_tf

# Three labelled inputs: the reference gets all three right, the candidate only the first.
LABELS = np.array([0, 1, 1])
RIGHT = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6]], np.float32)
WORSE = np.array([[0.9, 0.1], [0.7, 0.3], [0.6, 0.4]], np.float32)


def _entry(reference, candidate, max_drop):
    from export.parity import Thresholds, compare

    return compare(reference, candidate, LABELS, Thresholds(max_accuracy_drop=max_drop), variant="int8",
                   file="m-int8.onnx", data="d")


def _report(*entries):
    from export.parity import ParityReport

    return ParityReport(reference="m.keras", reference_sha256=None, data="d", created="t", entries=list(entries))


def test_a_fall_in_accuracy_is_negative_everywhere():
    entry = _entry(RIGHT, WORSE, max_drop=1.0)
    assert entry.accuracy_delta_points == pytest.approx(-200 / 3)
    assert not entry.passed and entry.failures == ["Δ acc -66.67 pt < -1 pt"]
    table = _report(entry).table()
    header, _, row = table.splitlines()[2:5]
    assert "Δ acc" in header and "drop" not in header
    assert "-66.67 pt" in row and "FAIL" in row
    assert "accuracy_delta_points" in _report(entry).to_dict()["entries"][0]


def test_a_rise_in_accuracy_is_positive_and_passes_the_drop_gate():
    entry = _entry(WORSE, RIGHT, max_drop=0.0)
    assert entry.accuracy_delta_points == pytest.approx(200 / 3) and entry.passed
    assert "+66.67 pt" in _report(entry).table()


def test_raise_if_failed_carries_the_report_and_its_path(tmp_path):
    from export import ParityFailed, raise_if_failed
    from runtime.errors import ExitCode, ThresholdError

    passing, failing = _report(_entry(RIGHT, RIGHT, 1.0)), _report(_entry(RIGHT, WORSE, 1.0))
    raise_if_failed(passing, tmp_path / "m.parity.json", files_written=True)  # nothing to say

    with pytest.raises(ParityFailed) as caught:
        raise_if_failed(failing, tmp_path / "m.parity.json", files_written=True)
    exc = caught.value
    assert isinstance(exc, ThresholdError) and exc.exit_code == ExitCode.THRESHOLD
    assert exc.report is failing and exc.report_path == tmp_path / "m.parity.json"
    assert str(exc) == (f"parity check failed: int8: Δ acc -66.67 pt < -1 pt. The .onnx files were "
                        f"written but did not pass; see {tmp_path / 'm.parity.json'}")
    with pytest.raises(ParityFailed, match=r"^parity check failed: int8: Δ acc -66\.67 pt < -1 pt$") as bare:
        raise_if_failed(failing)
    assert bare.value.report_path is None


@requires_tf
def test_export_model_returns_a_failed_report_like_check_parity(tiny_keras, tmp_path):
    from export import ExportConfig, Thresholds, check_parity, export_model

    out = tmp_path / "m.onnx"
    config = ExportConfig(fp16=True, quiet=True, fp16_thresholds=Thresholds(max_abs_diff=0.0))
    result = export_model(tiny_keras, config, output=out)  # no exception: the verdict is data
    assert not result.passed and not result.report.passed
    assert [e.passed for e in result.report.entries] == [True, False]
    assert json.loads(result.report_path.read_text())["passed"] is False
    assert out.exists() and result.onnx_paths["fp16"].exists()

    report = check_parity(out, [result.onnx_paths["fp16"]], thresholds=Thresholds(max_abs_diff=0.0), quiet=True)
    assert not report.passed  # the same convention


@requires_tf
def test_export_cli_shows_the_report_it_was_given_not_a_file_it_reads_back(tiny_keras, tmp_path, monkeypatch):
    from export.cli import main
    from export.parity import ParityReport

    monkeypatch.setattr(ParityReport, "write", lambda self, path: path)  # no file to read back
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(main, [str(tiny_keras), "-o", str(out), "--fp16", "--fp16-max-abs-diff", "0", "-q"])
    assert result.exit_code == 4, result.output
    assert "Δ acc" in result.output and "FAIL" in result.output
    assert result.output.rstrip().splitlines()[-1].startswith("cifar-export: error: parity check failed: fp16: ")
    assert "wrote " not in result.output  # as before: on a failure, the error line says what was written
