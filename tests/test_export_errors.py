"""Every bad input is one clear line and a non-zero exit, never a traceback; writes are atomic."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from helpers import requires_tf

pytestmark = requires_tf


def run_export(*args):
    from export.cli import main

    return CliRunner().invoke(main, [*map(str, args), "-q"])


def assert_one_line_error(result, code: int, *fragments: str):
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("cifar-export: error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.output


def _odd_model(tmp_path, shape, classes):
    import keras

    inputs = keras.Input(shape=shape, name="image")
    x = keras.layers.Flatten()(inputs)
    path = tmp_path / "odd.keras"
    keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(x)).save(path)
    return path


def test_missing_file(tmp_path):
    assert_one_line_error(run_export(tmp_path / "nope.keras"), 1, "nope.keras: no such file")


def test_not_a_keras_model(tmp_path):
    path = tmp_path / "notes.keras"
    path.write_text("hello, not a model")
    assert_one_line_error(run_export(path), 1, "not a Keras model")


def test_zip_without_keras_config(tmp_path):
    import zipfile

    path = tmp_path / "other.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hi")
    assert_one_line_error(run_export(path), 1, "not a Keras model")


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_keras_archive(tiny_keras, tmp_path, damage):
    data = bytearray(tiny_keras.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:  # flip bytes inside a stored member: the zip directory is intact, a CRC is not
        for i in range(len(data) // 3, len(data) // 3 + 64):
            data[i] ^= 0xFF
    path = tmp_path / "corrupt.keras"
    path.write_bytes(bytes(data))
    result = run_export(path)
    assert_one_line_error(result, 1, "corrupt.keras")
    assert "corrupt" in result.output or "cannot load" in result.output


def test_wrong_input_shape(tmp_path):
    assert_one_line_error(run_export(_odd_model(tmp_path, (28, 28, 1), 10)), 1, "expected (32, 32, 3)")


def test_wrong_number_of_classes(tmp_path):
    assert_one_line_error(run_export(_odd_model(tmp_path, (32, 32, 3), 5)), 1, "expected (10,)")


def test_unwritable_output(tiny_keras, tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    assert_one_line_error(run_export(tiny_keras, "-o", tmp_path / "afile" / "m.onnx"), 1,
                          "cannot create directory")
    (tmp_path / "adir.onnx").mkdir()
    assert_one_line_error(run_export(tiny_keras, "-o", tmp_path / "adir.onnx"), 1, "is a directory")


def test_int8_without_calibration_data(tiny_keras, tmp_path):
    assert_one_line_error(run_export(tiny_keras, "-o", tmp_path / "m.onnx", "--int8"), 1,
                          "calibration data missing", "--data")
    assert not (tmp_path / "m.onnx").exists()


def test_calibration_folder_missing_or_empty(tiny_keras, tmp_path):
    assert_one_line_error(run_export(tiny_keras, "-o", tmp_path / "m.onnx", "--int8", "--calibration",
                                     tmp_path / "nothing"), 1, "calibration data missing")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_export(tiny_keras, "-o", tmp_path / "m.onnx", "--int8", "--calibration",
                                     tmp_path / "empty"), 1, "calibration data missing")


def test_data_folder_missing(tiny_keras, tmp_path):
    assert_one_line_error(run_export(tiny_keras, "-o", tmp_path / "m.onnx", "--data", tmp_path / "none"), 1,
                          "no such file or directory")


def test_traceback_flag_shows_traceback(tmp_path):
    from export.cli import main

    result = CliRunner().invoke(main, [str(tmp_path / "nope.keras"), "--traceback"])
    assert result.exit_code == 1 and "Traceback" in result.output


def test_int8_with_calibration_folder(tiny_keras, small_data, tmp_path):
    """--calibration DIR: any images, prepared by runtime.image.preprocess, no --data needed."""
    result = run_export(tiny_keras, "-o", tmp_path / "m.onnx", "--int8", "--calibration", small_data / "train",
                        "--calib-images", "20")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m-int8.onnx").exists()


# --- atomic writes --------------------------------------------------------------------------

def test_failed_onnx_write_leaves_nothing_behind(tiny_keras, tmp_path, monkeypatch):
    import onnx

    from export import ExportConfig, export_model

    target = tmp_path / "m.onnx"
    target.write_bytes(b"old file")

    def half_write(proto, path, *args, **kwargs):
        with open(path, "wb") as fh:
            fh.write(proto.SerializeToString()[:100])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx, "save_model", half_write)
    with pytest.raises(Exception, match="No space left"):
        export_model(tiny_keras, ExportConfig(quiet=True), output=target)
    assert target.read_bytes() == b"old file"  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temp, no report


def test_failed_report_write_leaves_no_partial_json(tmp_path, monkeypatch):
    import json as json_module

    from export.parity import ParityReport

    def explode(*args, **kwargs):
        raise OSError(5, "I/O error")

    monkeypatch.setattr(json_module, "dump", explode)
    with pytest.raises(Exception, match="I/O error"):
        ParityReport(reference="r", reference_sha256=None, data="d", created="t").write(tmp_path / "r.json")
    assert list(tmp_path.iterdir()) == []


def test_export_twice_replaces_every_output_without_complaint(tiny_keras, small_data, tmp_path):
    """The quick start's second run: the same command again succeeds and renames new files into place."""
    import shutil

    model = tmp_path / "quickstart" / "model.keras"
    model.parent.mkdir()
    shutil.copy2(tiny_keras, model)
    outputs = ["model-fp16.onnx", "model-int8.onnx", "model.onnx", "model.parity.json"]
    args = [model, "--data", small_data, "--int8", "--fp16", "--calib-images", "20", "--max-int8-drop", "100"]

    first = run_export(*args)
    assert first.exit_code == 0, first.output
    inodes = {name: (model.parent / name).stat().st_ino for name in outputs}
    second = run_export(*args)
    assert second.exit_code == 0, second.output
    assert "error" not in second.output and "already" not in second.output
    assert [line for line in second.output.splitlines() if line.startswith("wrote ")] == [
        line for line in first.output.splitlines() if line.startswith("wrote ")]
    assert sorted(p.name for p in model.parent.iterdir()) == sorted([*outputs, "model.keras"])  # no temp files
    for name in outputs:  # each replaced by a rename (a new inode), never rewritten in place
        assert (model.parent / name).stat().st_ino != inodes[name], name
