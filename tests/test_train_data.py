"""train.data: every source format, the cache, and every bad-data case."""

from __future__ import annotations

import pickle
import tarfile

import numpy as np
import pytest
from helpers import CLASSES, make_images, write_folder_dataset, write_python_batches
from PIL import Image

from runtime.errors import DataError
from train.data import load_cifar10, take_slice


def test_folder_png(folder_dataset):
    data = load_cifar10(folder_dataset)
    assert data.x_train.shape == (60, 32, 32, 3) and data.x_train.dtype == np.uint8
    assert data.x_test.shape == (20, 32, 32, 3)
    assert data.class_names == CLASSES
    assert sorted(set(data.y_train.tolist())) == list(range(10))
    # Pixels survive a PNG round trip exactly, in RGB order.
    x, _ = make_images(60, seed=0)
    first_airplane = data.x_train[data.y_train == 0][0]
    assert np.array_equal(first_airplane, x[0])


def test_folder_jpg(tmp_path):
    data = load_cifar10(write_folder_dataset(tmp_path / "d", 20, 10, fmt="jpg"))
    assert data.x_train.shape == (20, 32, 32, 3)


def test_python_batches_folder(tmp_path):
    originals = write_python_batches(tmp_path / "cifar-10-batches-py")
    for path in (tmp_path / "cifar-10-batches-py", tmp_path):  # the folder or its parent
        data = load_cifar10(path)
        assert data.x_train.shape == (60, 32, 32, 3)
        assert np.array_equal(data.x_test, originals["test_batch"][0])
        assert np.array_equal(data.y_train[:12], originals["data_batch_1"][1])


def test_python_tarball(tmp_path):
    originals = write_python_batches(tmp_path / "cifar-10-batches-py")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    data = load_cifar10(archive)
    assert np.array_equal(data.x_test, originals["test_batch"][0])


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_python_batches_refuse_code(tmp_path):
    write_python_batches(tmp_path / "b")
    with open(tmp_path / "b" / "data_batch_3", "wb") as fh:
        pickle.dump({b"data": _Evil(), b"labels": []}, fh)
    with pytest.raises(DataError, match=r"data_batch_3.*refusing to load posix.system|data_batch_3.*refusing"):
        load_cifar10(tmp_path / "b")


def test_missing_directory(tmp_path):
    with pytest.raises(DataError, match="no such file or directory.*--data"):
        load_cifar10(tmp_path / "nope")


def test_missing_split(folder_dataset):
    import shutil

    shutil.rmtree(folder_dataset / "test")
    with pytest.raises(DataError, match=r"test: missing split folder"):
        load_cifar10(folder_dataset)


def test_missing_class_folder(folder_dataset):
    import shutil

    shutil.rmtree(folder_dataset / "train" / "frog")
    with pytest.raises(DataError, match=r"test: its classes differ from .*train's \(only in test: frog\)"):
        load_cifar10(folder_dataset)


def test_extra_class_folder_without_images(folder_dataset):
    (folder_dataset / "train" / "unicorn").mkdir()
    with pytest.raises(DataError, match=r"train/unicorn: class folder has no images"):
        load_cifar10(folder_dataset)


def test_corrupt_image_named(folder_dataset):
    bad = folder_dataset / "train" / "cat" / "0003.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DataError, match=r"0003\.png"):
        load_cifar10(folder_dataset)


def test_truncated_jpeg_named(tmp_path):
    root = write_folder_dataset(tmp_path / "d", 20, 10, fmt="jpg")
    bad = root / "test" / "dog" / "0005.jpg"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(DataError, match=r"0005\.jpg"):
        load_cifar10(root)


def test_other_image_sizes_are_prepared_like_the_runtime(folder_dataset):
    from runtime.image.preprocess import prepare

    odd = folder_dataset / "train" / "ship" / "0008.png"
    Image.new("RGB", (64, 48), (200, 30, 10)).save(odd)
    data = load_cifar10(folder_dataset)
    assert data.x_train.shape == (60, 32, 32, 3)
    index = sorted(p.relative_to(folder_dataset / "train").as_posix()
                   for p in (folder_dataset / "train").rglob("*.png")).index("ship/0008.png")
    assert np.array_equal(data.x_train[index], prepare(odd))


def test_empty_split(folder_dataset):
    for f in (folder_dataset / "test").rglob("*.png"):
        f.unlink()
    with pytest.raises(DataError, match="test/airplane: class folder has no images"):
        load_cifar10(folder_dataset)


def test_no_network_says_pass_data(monkeypatch):
    keras_datasets = pytest.importorskip("keras.datasets.cifar10")

    def offline():
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras_datasets, "load_data", offline)
    with pytest.raises(DataError, match=r"could not download CIFAR-10 \(no network.*pass --data"):
        load_cifar10(None)


def test_cache_is_used_and_invalidated(folder_dataset, monkeypatch):
    import train.folders as data_mod

    first = load_cifar10(folder_dataset)
    calls = []
    real_decode = data_mod._decode
    monkeypatch.setattr(data_mod, "_decode", lambda item, contract: calls.append(item) or real_decode(item, contract))
    second = load_cifar10(folder_dataset)
    assert calls == [] and np.array_equal(first.x_train, second.x_train)
    # Changing a source file changes the key: the split is decoded again.
    x, _ = make_images(1, seed=9)
    Image.fromarray(x[0]).save(folder_dataset / "train" / "bird" / "0002.png")
    third = load_cifar10(folder_dataset)
    assert len(calls) == 60
    assert not np.array_equal(first.x_train, third.x_train)


def test_take_slice(folder_dataset):
    data = take_slice(load_cifar10(folder_dataset), 15, 5)
    assert len(data.x_train) == 15 and len(data.y_train) == 15 and len(data.x_test) == 5
