"""Export round trip on a tiny model: files, outputs, metadata read back, parity report."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import requires_tf

from runtime.model.contract import (
    CIFAR10_CLASSES,
    FORMAT_VERSION,
    KEY_CLASS_NAMES,
    KEY_FORMAT,
    KEY_INPUT,
    KEY_OUTPUT,
    KEY_PARITY,
    KEY_PROVENANCE,
    KEY_VARIANT,
    InputContract,
)

pytestmark = requires_tf


def test_writes_all_variants_and_report(exported):
    assert set(exported.onnx_paths) == {"fp32", "int8", "fp16"}
    fp32 = exported.onnx_paths["fp32"]
    assert exported.onnx_paths["int8"] == fp32.with_name("tiny-int8.onnx")
    assert exported.onnx_paths["fp16"] == fp32.with_name("tiny-fp16.onnx")
    assert exported.report_path == fp32.with_name("tiny.parity.json")
    report = json.loads(exported.report_path.read_text())
    assert [e["variant"] for e in report["entries"]] == ["fp32", "int8", "fp16"]
    fp32_entry = report["entries"][0]
    assert fp32_entry["data"] == "CIFAR-10 test split, 40 images" and fp32_entry["n"] == 40
    assert fp32_entry["passed"] and fp32_entry["max_abs_diff"] <= 1e-4 and fp32_entry["top1_agreement"] == 1.0
    assert fp32_entry["file_size_bytes"] == fp32.stat().st_size
    assert {"convert", "check", "parity_keras", "quantize_int8", "parity_int8"} <= set(report["stages"])
    # no stray temporary files beside the outputs
    assert sorted(p.name for p in fp32.parent.iterdir()) == [
        "tiny-fp16.onnx", "tiny-int8.onnx", "tiny.onnx", "tiny.parity.json"]


def test_onnx_matches_keras_with_dynamic_batch(exported, tiny_keras):
    import keras
    import onnxruntime as ort

    session = ort.InferenceSession(str(exported.onnx_paths["fp32"]), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.name == "image_rgb" and inp.shape == ["batch", 32, 32, 3]
    assert out.name == "probabilities" and out.shape == ["batch", 10]
    x = np.random.default_rng(1).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    model = keras.saving.load_model(tiny_keras, compile=False)
    np.testing.assert_allclose(session.run(None, {"image_rgb": x})[0], model.predict(x, verbose=0), atol=1e-5)
    fp16 = ort.InferenceSession(str(exported.onnx_paths["fp16"]), providers=["CPUExecutionProvider"])
    assert fp16.get_inputs()[0].type == "tensor(float)" and fp16.get_outputs()[0].type == "tensor(float)"


@pytest.mark.parametrize("variant", ["fp32", "int8", "fp16"])
def test_metadata_read_back(exported, tiny_keras, variant):
    from export import read_metadata
    from export.metadata import sha256_file

    meta = read_metadata(exported.onnx_paths[variant])
    assert meta[KEY_FORMAT] == FORMAT_VERSION
    assert meta[KEY_VARIANT] == variant
    assert meta[KEY_OUTPUT] == "probabilities"
    assert tuple(meta[KEY_CLASS_NAMES]) == CIFAR10_CLASSES
    assert InputContract.from_json(json.dumps(meta[KEY_INPUT])) == InputContract()
    prov = meta[KEY_PROVENANCE]
    assert prov["source"] == "model.keras" and prov["source_sha256"] == sha256_file(tiny_keras)
    assert {"tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime"} <= set(prov["tools"]) | {"tensorflow"}
    assert prov["opset"] == 17 and prov["created"].endswith("+00:00")
    assert (prov["quantization"] is None) == (variant == "fp32")
    parity = meta[KEY_PARITY]
    assert parity["variant"] == variant and parity["n"] == 40 and "passed" in parity
    if variant == "int8":
        assert prov["quantization"]["format"] == "QDQ" and prov["quantization"]["per_channel"]
        assert any("Softmax" in n for n in prov["quantization"]["float_layers"])


def test_int8_graph_is_quantized(exported):
    import onnx

    ops = {n.op_type for n in onnx.load(str(exported.onnx_paths["int8"])).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_synthetic_inputs_without_data(tiny_keras, tmp_path):
    from export import ExportConfig, export_model

    out = tmp_path / "new" / "folder" / "m.onnx"  # missing folders are created
    result = export_model(tiny_keras, ExportConfig(quiet=True), output=out)
    assert out.is_file() and result.onnx_paths["fp32"] == out
    entry = result.report.entries[0]
    assert entry.data.startswith("synthetic: ") and entry.reference_accuracy is None and entry.passed
    assert "synthetic" in result.report.table()


def test_import_loads_no_heavy_modules():
    code = ("import sys, export, export.cli, export.parity_cli; "
            "heavy = [m for m in ('tensorflow', 'keras', 'tf2onnx', 'onnx') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_line_per_stage_and_no_bar_frames_in_a_log(tiny_keras, small_data, tmp_path):
    # stderr is a pipe, as in a log file: the stages are plain lines, no carriage-return frames.
    out = tmp_path / "m.onnx"
    proc = subprocess.run([sys.executable, "-m", "export.cli", str(tiny_keras), "-o", str(out),
                           "--data", str(small_data)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr
    stages = [line.split(" (")[0] for line in proc.stderr.splitlines() if line.startswith("export: ")]
    assert stages == ["export: loaded the Keras model", "export: read the data",
                      "export: measured the model's accuracy under each pixel scaling",
                      "export: not calibrating: no config.json beside model.keras, so which training images "
                      "the model never saw is unknown",
                      "export: folded BatchNorm and scaling into the layers", "export: converted to ONNX",
                      "export: checked the ONNX graph", "export: ran Keras on the parity images",
                      "export: fp32 parity on 40 images"]
    quiet = subprocess.run([sys.executable, "-m", "export.cli", str(tiny_keras), "-o", str(out), "--quiet"],
                           capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0 and "export: " not in quiet.stderr
