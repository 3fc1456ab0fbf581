"""The shipped models on a CPU without VNNI (qemu's Haswell: AVX2, no AVX-512, no VNNI; see
tests/qemu.py), through the runtime as cifar-run loads them: each passes its own self-check
there and labels the ten samples right. And the self-check is what catches the failure this
replaced: a file quantized with 8-bit weights, whose u8s8 kernels saturate there, is refused.

Nothing is mocked: onnxruntime picks its kernels from the CPU qemu presents.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import REPO, has_module, requires_qemu
from qemu import python_under_qemu

ASSETS = REPO / "runtime" / "assets"
SHIPPED = REPO / "train" / "shipped" / "default"
pytestmark = [requires_qemu, pytest.mark.skipif(not (ASSETS / "model-int8.onnx").is_file(),
                                                reason="no model bundled")]

# Each model loaded as cifar-run does (the self-check runs at load); one JSON line per model.
RUN = """
import json, sys
from runtime.model.bundled import sample_images
from runtime.model.classifier import Classifier
from runtime.errors import CifarEdgeError
for path in sys.argv[1:]:
    try:
        clf = Classifier(path, provider="cpu")
    except CifarEdgeError as exc:
        print(json.dumps({"path": path, "refused": str(exc)}))
        continue
    right = sum(clf.predict(p).label == p.stem for p in sample_images())
    print(json.dumps({"path": path, "self_check": clf.self_check.to_dict(), "right": right}))
"""


def under_qemu(*paths) -> dict[str, dict]:
    proc = python_under_qemu(RUN, [str(p) for p in paths], timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {row["path"]: row for row in rows}


def test_the_shipped_files_pass_their_self_check_without_vnni():
    files = [ASSETS / "model-int8.onnx", ASSETS / "model.onnx", SHIPPED / "model-int8-flip.onnx"]
    rows = under_qemu(*files)
    for path in files:
        row = rows[str(path)]
        assert "refused" not in row, row
        check = row["self_check"]
        assert check["status"] == "passed" and check["labels_differ"] == 0, row
        assert check["max_abs_diff"] < 1e-3, row  # 6e-8 when written: the same integer sums
        assert row["right"] == 10, row


@pytest.mark.skipif(not has_module("onnx"), reason="quantizing needs the train extra (onnx)")
def test_a_file_whose_kernels_saturate_there_is_refused(tmp_path):
    """8-bit weights, the old recipe: its self-check vectors hold the FP32 file's answers (what
    it gives with VNNI, within 0.2), and under qemu its labels move, so it is refused."""
    import onnx

    from export.convert import save_onnx
    from export.quantize import Int8Config, calibration_from_folder, quantize_int8
    from runtime.model.classifier import Classifier
    from runtime.model.contract import KEY_SELF_CHECK
    from runtime.model.selfcheck import SelfCheckVectors

    bundled = Classifier(ASSETS / "model-int8.onnx", verify=False)
    vectors = SelfCheckVectors.from_json(bundled.metadata.raw[KEY_SELF_CHECK])
    fp32_answers, _ = Classifier(ASSETS / "model.onnx", verify=False).run(list(vectors.images_hwc))
    calib = calibration_from_folder(ASSETS / "samples", 10)
    old = quantize_int8(onnx.load(ASSETS / "model.onnx"), calib,
                        Int8Config(reduce_range=False, float_first_conv=False)).model_proto
    claim = SelfCheckVectors(vectors.images_hwc, fp32_answers, fp32_answers, 0.2, {"cpu": "the test's claim"})
    del old.metadata_props[:]
    for key, value in bundled.metadata.raw.items():
        entry = old.metadata_props.add()
        entry.key, entry.value = key, claim.to_json() if key == KEY_SELF_CHECK else value
    path = tmp_path / "model-int8.onnx"
    save_onnx(old, path)
    row = under_qemu(path)[str(path)]
    assert "refused" in row, row
    message = row["refused"]
    assert message.startswith("model-int8.onnx (int8): this machine's answers are not the exported ones"), message
    assert "--no-verify" in message and "\n" not in message
    labels = np.asarray(fp32_answers).argmax(1)
    assert len(set(labels.tolist())) == 8  # one image per class: the check covers 8 outputs
