"""Shared fixtures: small generated CIFAR-10-shaped data and tiny models, so tests never need
the real set.

Every fixture is found by pytest, so test modules import none (plain helpers are in
helpers.py). TensorFlow, Keras and onnx are
imported inside the fixtures that need them: the runtime tests also run in the base-only
environment (see .ci/run).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from helpers import has_module, write_folder_dataset
from runtime_models import COMMITTED, build_model

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture
def folder_dataset(tmp_path) -> Path:
    return write_folder_dataset(tmp_path / "cifar10")


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    # Session-scoped fixtures (the shared export) decode data too: never into the user's cache.
    patch = pytest.MonkeyPatch()
    patch.setenv("CIFAR_EDGE_CACHE", str(tmp_path_factory.mktemp("session-cache")))
    yield
    patch.undo()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    # Each test gets its own decode cache, so tests never see each other's arrays.
    monkeypatch.setenv("CIFAR_EDGE_CACHE", str(tmp_path / "cache"))


# -- tiny ONNX models for the runtime tests (tests/runtime_models.py builds them) ---------------

@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The tiny colour classifier with full cifar-edge metadata."""
    if has_module("onnx"):
        return build_model(tmp_path_factory.mktemp("models") / "tiny_contract.onnx")
    return COMMITTED["contract"]


@pytest.fixture(scope="session")
def no_metadata_model(tmp_path_factory) -> Path:
    if has_module("onnx"):
        return build_model(tmp_path_factory.mktemp("models") / "tiny_no_metadata.onnx",
                           with_metadata=False)
    return COMMITTED["no_metadata"]


@pytest.fixture
def bundled_assets(tmp_path, monkeypatch, tiny_model) -> Path:
    """A placeholder bundled model: the assets directory points at a copy of the tiny model."""
    assets = tmp_path / "assets"
    assets.mkdir()
    shutil.copy(tiny_model, assets / "model-int8.onnx")
    monkeypatch.setenv("CIFAR_EDGE_ASSETS", str(assets))
    return assets


# -- a tiny Keras model and its export, for the export tests: built once, untrained ------------

@pytest.fixture(scope="session")
def tiny_keras(tmp_path_factory) -> Path:
    import keras

    from train.models import build_tiny

    keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "model.keras"
    build_tiny().save(path)
    return path


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
