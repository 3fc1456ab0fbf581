"""runtime.Classifier and runtime.model.providers on tiny ONNX models with cifar-edge metadata."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from runtime_models import COMMITTED, build_model, metadata, reference_probabilities, solid

from runtime.errors import ImageError, ModelError, ProviderError
from runtime.image.preprocess import prepare, to_batch
from runtime.model.classifier import Classifier
from runtime.model.contract import CIFAR10_CLASSES
from runtime.model.providers import available_providers, resolve

SAMPLES = sorted((__import__("runtime.model.bundled").model.bundled.PACKAGE_ASSETS / "samples").glob("*.jpg"))


@pytest.fixture(scope="module")
def clf(tiny_model):
    return Classifier(tiny_model, provider="cpu", threads=1)


def test_reads_metadata(clf):
    assert clf.class_names == CIFAR10_CLASSES
    assert (clf.contract.height, clf.contract.width, clf.contract.resize) == (32, 32, "center-crop")
    assert clf.provider == "cpu" and clf.variant == "fp32"
    assert "tiny_contract.onnx" in clf.describe() and "cpu" in clf.describe()


def test_refuses_model_without_metadata(no_metadata_model):
    with pytest.raises(ModelError, match="no cifar-edge metadata.*cifar-export"):
        Classifier(no_metadata_model)


def test_missing_and_corrupt_model(tmp_path):
    with pytest.raises(ModelError, match="no such model file"):
        Classifier(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf")
    with pytest.raises(ModelError, match="cannot load"):
        Classifier(bad)


def test_colour_predictions(clf):
    assert clf.predict(image_rgb=solid((255, 0, 0))).label == "airplane"
    assert clf.predict(image_rgb=solid((0, 255, 0))).label == "automobile"
    assert clf.predict(image_rgb=solid((0, 0, 255))).label == "bird"
    assert clf.predict(image_rgb=solid((255, 255, 0))).label == "cat"


def test_colour_order_is_explicit(clf, tmp_path):
    red_rgb = solid((255, 0, 0))
    assert clf.predict(frame_bgr=red_rgb).label == "bird"  # the same bytes read as BGR are blue
    assert clf.predict(frame_bgr=red_rgb[:, :, ::-1]).label == "airplane"
    with pytest.raises(ImageError, match="image_rgb= or frame_bgr="):
        clf.predict(red_rgb)
    with pytest.raises(ImageError, match="exactly one"):
        clf.predict(image_rgb=red_rgb, frame_bgr=red_rgb)
    with pytest.raises(ImageError, match="BGR frame"):
        clf.predict(frame_bgr=np.zeros((4, 4), np.uint8))


def test_path_pil_and_array_agree(clf, tmp_path):
    path = tmp_path / "x.png"
    arr = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    by_path = clf.predict(path).probabilities
    by_str = clf.predict(str(path)).probabilities
    by_pil = clf.predict(Image.open(path)).probabilities
    by_rgb = clf.predict(image_rgb=arr).probabilities
    by_bgr = clf.predict(frame_bgr=np.ascontiguousarray(arr[:, :, ::-1])).probabilities
    for other in (by_str, by_pil, by_rgb, by_bgr):
        np.testing.assert_allclose(by_path, other, atol=1e-6)


def test_feeds_raw_pixels_from_the_shared_preprocessing(clf):
    """The runtime adds no scaling of its own: it must match the graph on raw 0-255 input."""
    for path in SAMPLES[:4]:
        expected = reference_probabilities(to_batch([prepare(path)]))[0]
        np.testing.assert_allclose(clf.predict(path).probabilities, expected, atol=1e-5)


def test_top_k_and_probabilities(clf):
    pred = clf.predict(image_rgb=solid((255, 0, 0)), top_k=5)
    assert len(pred.top_k) == 5
    probs = [p for _, p in pred.top_k]
    assert probs == sorted(probs, reverse=True)
    assert pred.probabilities.shape == (10,) and abs(pred.probabilities.sum() - 1) < 1e-5
    d = pred.to_dict()
    assert d["label"] == "airplane" and len(d["top_k"]) == 5
    assert len(clf.predict(image_rgb=solid((1, 2, 3)), top_k=50).top_k) == 10


def test_predict_batch(clf):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)] * 10
    preds = clf.predict_batch([solid(c) for c in colours], batch_size=7)
    assert [p.label for p in preds[:4]] == ["airplane", "automobile", "bird", "cat"]
    assert len(preds) == 40
    bgr = clf.predict_batch([solid((255, 0, 0))], color_order="BGR")
    assert bgr[0].label == "bird"
    mixed = clf.predict_batch([SAMPLES[0], Image.open(SAMPLES[0])])
    np.testing.assert_allclose(mixed[0].probabilities, mixed[1].probabilities, atol=1e-6)
    with pytest.raises(ImageError):
        clf.predict_batch([solid((0, 0, 0))], color_order="HSV")


def test_predict_files_reports_bad_files_and_keeps_order(clf, tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("nope")
    sources = [SAMPLES[0], tmp_path / "missing.jpg", SAMPLES[1], tmp_path / "empty.jpg",
               tmp_path / "text.png", SAMPLES[2]]
    results = list(clf.predict_files(sources, batch_size=2, keep_images=True))
    assert [r.source for r in results] == [str(s) for s in sources]
    assert [r.ok for r in results] == [True, False, True, False, False, True]
    assert "no such file" in results[1].error and "empty" in results[3].error
    assert results[0].image_rgb is not None and results[0].prediction.label


# -- model variants (need the onnx package to build) --------------------------------------

def test_logits_model_gets_softmax(tmp_path):
    pytest.importorskip("onnx")
    path = build_model(tmp_path / "logits.onnx", output="logits",
                       meta=metadata(output="logits"))
    pred = Classifier(path).predict(image_rgb=solid((255, 0, 0)))
    assert pred.label == "airplane" and abs(pred.probabilities.sum() - 1) < 1e-5


def test_class_count_mismatch_is_refused(tmp_path):
    pytest.importorskip("onnx")
    path = build_model(tmp_path / "five.onnx", meta=metadata(class_names=CIFAR10_CLASSES[:5]))
    with pytest.raises(ModelError, match="10 outputs.*5 classes"):
        Classifier(path)


def test_input_shape_mismatch_is_refused(tmp_path):
    pytest.importorskip("onnx")
    path = build_model(tmp_path / "64.onnx", height=64, width=64)
    with pytest.raises(ModelError, match="does not match"):
        Classifier(path)


def test_fixed_batch_of_one(tmp_path):
    pytest.importorskip("onnx")
    clf = Classifier(build_model(tmp_path / "b1.onnx", batch=1))
    assert [p.label for p in clf.predict_batch([solid((255, 0, 0)), solid((0, 0, 255))])] == \
        ["airplane", "bird"]


def test_committed_fixture_models_are_current(tmp_path):
    """tests/data holds copies for the base environment; they must match the builder."""
    pytest.importorskip("onnx")
    for name, committed in COMMITTED.items():
        fresh = build_model(tmp_path / committed.name, with_metadata=name == "contract")
        assert fresh.read_bytes() == committed.read_bytes(), \
            f"{committed} is stale: run python tests/runtime_models.py"
        assert committed.stat().st_size < 50_000


# -- providers ------------------------------------------------------------------------------

def test_provider_auto_and_cpu():
    assert "cpu" in available_providers()
    assert resolve("cpu") == ["CPUExecutionProvider"]
    assert resolve("CPUExecutionProvider") == ["CPUExecutionProvider"]
    auto = resolve("auto")
    assert auto[-1] == "CPUExecutionProvider"


def test_unavailable_provider_lists_available(tiny_model):
    missing = next(p for p in ("tensorrt", "cuda", "coreml", "dml") if p not in available_providers())
    with pytest.raises(ProviderError, match=f"'{missing}' is not available.*available: .*cpu"):
        Classifier(tiny_model, provider=missing)


def test_unknown_provider(tiny_model):
    with pytest.raises(ProviderError, match="unknown execution provider 'warp-drive'"):
        Classifier(tiny_model, provider="warp-drive")


def test_threads(tiny_model):
    clf = Classifier(tiny_model, threads=2)
    assert clf.session.get_session_options().intra_op_num_threads == 2
    with pytest.raises(ModelError, match="threads"):
        Classifier(tiny_model, threads=-1)


def test_ort_ms_is_per_image(tiny_model, tmp_path, monkeypatch):
    """Each image gets its batch's onnxruntime time divided by the batch's size."""
    clf = Classifier(tiny_model)
    real_run = clf.run
    monkeypatch.setattr(clf, "run", lambda hwc: (real_run(hwc)[0], 120.0))  # 120 ms a batch
    preds = clf.predict_batch([solid((255, 0, 0))] * 7, batch_size=4)  # batches of 4 and 3
    assert [p.ort_ms for p in preds] == [30.0] * 4 + [40.0] * 3
    assert clf.predict(image_rgb=solid((255, 0, 0))).ort_ms == 120.0
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(solid((0, 255, 0))).save(paths[-1])
    results = list(clf.predict_files(paths[:2] + [tmp_path / "missing.png"] + paths[2:], batch_size=2))
    # The missing file flushes the first pair; the last three run as a pair and a single.
    assert [r.prediction.ort_ms if r.ok else None for r in results] == [60.0, 60.0, None, 60.0, 60.0, 120.0]
