"""The self-check vectors cifar-export writes into every file, read back by the runtime."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.image.preprocess import to_batch
from runtime.model.classifier import Classifier
from runtime.model.contract import KEY_SELF_CHECK
from runtime.model.selfcheck import PASSED, TOLERANCE, SelfCheckVectors, run_check

pytestmark = pytest.mark.tf


def vectors_of(path) -> SelfCheckVectors:
    clf = Classifier(path, verify=False, allow_failed=True)
    return SelfCheckVectors.from_json(clf.metadata.raw[KEY_SELF_CHECK], str(path))


def test_every_exported_file_carries_vectors_that_pass_here(exported):
    assert set(exported.onnx_paths) == {"fp32", "int8", "fp16"}
    for variant, path in exported.onnx_paths.items():
        vectors = vectors_of(path)
        assert vectors.images_hwc.dtype == np.uint8 and vectors.images_hwc.shape[1:] == (32, 32, 3)
        assert 1 <= len(vectors.images_hwc) <= 8
        assert vectors.tolerance == TOLERANCE[variant]
        assert vectors.made_on["onnxruntime"] and "cpu" in vectors.made_on
        clf = Classifier(path, allow_failed=True)
        assert clf.self_check.status == PASSED and clf.self_check.max_abs_diff < 1e-4, (variant, clf.self_check)


def test_vectors_are_parity_images_with_the_file_and_keras_answers(exported, tiny_keras, small_data):
    from export.parity import keras_predictor, load_test_split
    from train.models import load_keras_model

    test_images = load_test_split(small_data, None, 32).batch_nhwc.astype(np.uint8)
    keras = keras_predictor(load_keras_model(tiny_keras))
    for variant in ("fp32", "int8"):
        path = exported.onnx_paths[variant]
        vectors = vectors_of(path)
        # Each image is one of the parity (test) images, stored exactly.
        assert all(any(np.array_equal(image, t) for t in test_images) for image in vectors.images_hwc)
        clf = Classifier(path, verify=False, allow_failed=True)
        here, _ = clf.run(list(vectors.images_hwc))
        np.testing.assert_allclose(here, vectors.expected, atol=1e-5)
        # No temperature (the tiny export has no held-out run data): the reference is Keras itself.
        np.testing.assert_allclose(vectors.reference, keras(to_batch(list(vectors.images_hwc))), atol=1e-5)
        assert run_check(clf).reference_max_abs_diff == pytest.approx(
            float(np.abs(here - vectors.reference).max()), abs=1e-6)
