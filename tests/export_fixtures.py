"""Session-scoped tiny models for the export tests: built once, untrained (fast, deterministic)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import write_folder_dataset


def save_model(model, path: Path) -> Path:
    model.save(path)
    return path


@pytest.fixture(scope="session")
def tiny_keras(tmp_path_factory) -> Path:
    import keras

    from train.models import build_tiny

    keras.utils.set_random_seed(0)
    return save_model(build_tiny(), tmp_path_factory.mktemp("tiny") / "model.keras")


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    return write_folder_dataset(tmp_path_factory.mktemp("data") / "cifar10", n_train=60, n_test=40)


@pytest.fixture(scope="session")
def exported(tiny_keras, small_data, tmp_path_factory):
    """One full export (FP32 + INT8 + FP16 with data) shared by the read-back tests."""
    from export import DEFAULT_THRESHOLDS, ExportConfig, Int8Config, export_model

    out = tmp_path_factory.mktemp("export") / "tiny.onnx"
    config = ExportConfig(int8=True, fp16=True, quiet=True, int8_config=Int8Config(calib_images=50),
                          # 40 test images: one image is 2.5 points; this test is not about INT8 accuracy
                          int8_thresholds=DEFAULT_THRESHOLDS["int8"].override(max_accuracy_drop=100.0))
    return export_model(tiny_keras, config, output=out, data=small_data)
