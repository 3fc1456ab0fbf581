"""Shared fixtures: small generated CIFAR-10-shaped data and tiny models, so tests never need
the real set.

Every fixture is found by pytest, so test modules import none. TensorFlow, Keras and onnx are
imported inside the fixtures that need them: the runtime tests also run in the base-only
environment (see .ci/run).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from runtime_models import COMMITTED, build_model

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("CIFAR10_DIR", REPO.parent / "shared" / "data" / "cifar10"))
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def make_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 32, 32, 3) uint8 images whose class is learnable: each class has its own colour."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 10
    palette = rng.integers(0, 256, (10, 3))
    x = palette[y][:, None, None, :] + rng.normal(0, 20, (n, 32, 32, 3))
    return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)


def write_folder_dataset(root: Path, n_train: int = 60, n_test: int = 20, fmt: str = "png") -> Path:
    from PIL import Image

    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        x, y = make_images(n, seed)
        for i, (img, label) in enumerate(zip(x, y)):
            d = root / split / CLASSES[label]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{i:04d}.{fmt}")
    return root


@pytest.fixture
def folder_dataset(tmp_path) -> Path:
    return write_folder_dataset(tmp_path / "cifar10")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    # Each test gets its own decode cache, so tests never see each other's arrays.
    monkeypatch.setenv("CIFAR_EDGE_CACHE", str(tmp_path / "cache"))


def has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


requires_tf = pytest.mark.skipif(not has_module("tensorflow"), reason="needs the train extra (TensorFlow)")
requires_real_data = pytest.mark.skipif(not (REAL_DATA / "test").is_dir(),
                                        reason=f"real CIFAR-10 not found at {REAL_DATA}")


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
