"""Training data: an image-folder dataset of any classes, or CIFAR-10's python batches or
Keras' downloader.

Every loader returns an ``ImageDataset``: (N, S, S, 3) uint8 RGB images at the model's input
size S (32 unless asked) and (N,) int labels. Folders (``train.folders``) go through
``runtime.image.preprocess.prepare``, the one preprocessing path the runtime uses too, once, and are
cached; CIFAR-10's arrays are resized through ``runtime.image.preprocess.prepare_array`` when S is
not 32.
"""

from __future__ import annotations

import os
import pickle
import tarfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Collection

import numpy as np

from runtime.errors import DataError
from runtime.image.preprocess import prepare_array
from runtime.model.contract import CIFAR10_CLASSES, InputContract
from runtime.model.providers import cache_root

from .folders import SPLITS, decode_split, list_folder, warn_duplicates
from .runfolder import read_config

CIFAR10_SIZE = 32  # CIFAR-10's own images are 32x32


@dataclass(frozen=True)
class ImageDataset:
    x_train: np.ndarray  # (N, S, S, 3) uint8 RGB, S the input size (CIFAR-10: (50000, 32, 32, 3))
    y_train: np.ndarray  # (N,) int64 class index
    x_test: np.ndarray  # (M, S, S, 3) uint8 RGB
    y_test: np.ndarray  # (M,) int64
    class_names: tuple[str, ...]
    source: str  # where it came from, for config.json / reports
    # How a folder was split, as config.json records it: {"layout": "train/test"}, or for
    # DIR/<class>/ {"layout": "flat", ..., "test_files": [...]}; None for CIFAR-10's batches.
    split: dict | None = None


def default_cache_dir() -> Path:
    """Where decoded datasets are cached: cifar-edge's one cache folder ($CIFAR_EDGE_CACHE)."""
    return cache_root()


def check_data_path(data: str | os.PathLike | None) -> None:
    """Fail fast, before any heavy import, on a ``--data`` that cannot be a dataset; the
    message says the fix. None (Keras' downloader) passes."""
    if data is None:
        return
    path = Path(data)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory (pass --data DIR with train/ and test/ inside)")
    if path.is_file():
        if not path.name.endswith((".tar.gz", ".tgz")):
            raise DataError(f"{path}: not a data directory or a cifar-10-python.tar.gz archive")
        return
    if path.name in SPLITS and (path.parent / "train").is_dir() and (path.parent / "test").is_dir():
        raise DataError(f"{path}: this is the {path.name}/ split of a dataset; did you mean the folder "
                        f"above? --data {path.parent}")


def load_dataset(data: str | os.PathLike | None = None, cache_dir: Path | None = None,
                 splits: tuple[str, ...] = SPLITS, quiet: bool | None = None,
                 log: Callable[[str], None] | None = None, *, input_size: int = CIFAR10_SIZE,
                 test_files: Collection[str] | None = None) -> ImageDataset:
    """Load ``data``: an image folder (``DIR/{train,test}/<class>/`` or ``DIR/<class>/``), a
    ``cifar-10-batches-py`` folder, a ``cifar-10-python.tar.gz``, or None for Keras' downloader,
    with images of ``input_size`` pixels square.

    test_files: for a ``DIR/<class>/`` folder, the files (relative to DIR) of its test split, as
        a run recorded them (``load_for_model``); None: the fixed rule of ``train.folders``.
    Decoding a folder the first time takes a while (about 20 s for 60,000 JPEGs on 2 cores):
    ``log`` gets a line saying so and where the cache goes, with a progress bar on a terminal
    unless ``quiet``, and a warning when test files are copies of training files.
    """
    check_data_path(data)
    if data is None:
        return _at_size(_load_keras_download(), input_size)
    path = Path(data)
    if path.is_file():
        return _at_size(_load_python_tarball(path), input_size)
    if (path / "data_batch_1").exists() or (path / "cifar-10-batches-py").is_dir():
        root = path if (path / "data_batch_1").exists() else path / "cifar-10-batches-py"
        return _at_size(_load_python_batches(root), input_size)
    for name in ("cifar-10-python.tar.gz", "cifar-10-python.tgz"):
        if (path / name).is_file():
            return _at_size(_load_python_tarball(path / name), input_size)
    # Resolved, so "../data" and "/abs/data" share one cache entry.
    return _load_folder(path.resolve(), cache_dir or default_cache_dir(), splits, quiet, log, input_size,
                        test_files)


load_cifar10 = load_dataset  # the name from when CIFAR-10 was the only dataset


def load_for_model(data: str | os.PathLike | None, model_path: str | os.PathLike | None, input_size: int,
                   splits: tuple[str, ...] = SPLITS, quiet: bool | None = None) -> ImageDataset:
    """The dataset at ``data`` as the run of ``model_path`` saw it: at the model's
    ``input_size``, and for a ``DIR/<class>/`` folder with the test split the run's config.json
    (beside the model) recorded. What evaluation, parity and INT8 calibration read."""
    recorded = recorded_test_files(Path(model_path).parent) if model_path is not None else None
    return load_dataset(data, splits=splits, quiet=quiet, input_size=input_size, test_files=recorded)


def recorded_test_files(run_dir: Path) -> list[str] | None:
    """The test files a run on a ``DIR/<class>/`` folder recorded in its config.json, else None."""
    try:
        split = read_config(run_dir).get("split")
    except (OSError, ValueError, AttributeError):
        return None
    return split.get("test_files") if isinstance(split, dict) else None


def _at_size(data: ImageDataset, input_size: int) -> ImageDataset:
    """CIFAR-10's 32x32 arrays resized to ``input_size`` by the runtime's array path (as is, at 32)."""
    if input_size == CIFAR10_SIZE:
        return data
    contract = InputContract(height=input_size, width=input_size)

    def resize(x: np.ndarray) -> np.ndarray:
        out = np.empty((len(x), input_size, input_size, 3), np.uint8)
        for i, image in enumerate(x):
            out[i] = prepare_array(image, contract)
        return out

    return replace(data, x_train=resize(data.x_train), x_test=resize(data.x_test))


# --- image folders ------------------------------------------------------------------------

def _load_folder(root: Path, cache_dir: Path, splits: tuple[str, ...], quiet: bool | None,
                 log: Callable[[str], None] | None, input_size: int,
                 test_files: Collection[str] | None) -> ImageDataset:
    listing = list_folder(root, test_files, splits)
    empty = (np.zeros((0, input_size, input_size, 3), np.uint8), np.zeros((0,), np.int64), None)
    loaded = {split: decode_split(split, listing.files[split], root, cache_dir, input_size, quiet, log)
              if split in splits else empty for split in SPLITS}
    untested = (listing.split or {}).get("untested") or []
    if log is not None and untested and "test" in splits:
        log(f"warning: {len(untested)} class(es) of one image train but are not tested: "
            f"{', '.join(untested[:5])}{', ...' if len(untested) > 5 else ''} (a class needs 2 images to be tested)")
    if log is not None and all(split in splits for split in SPLITS):
        warn_duplicates(listing.files["train"], loaded["train"][2], listing.files["test"], loaded["test"][2], log)
    return ImageDataset(*loaded["train"][:2], *loaded["test"][:2], listing.class_names, str(root), listing.split)


# --- official python batches --------------------------------------------------------------

class _RestrictedUnpickler(pickle.Unpickler):
    """The CIFAR-10 batches are plain dicts of bytes, lists, ints and one numpy array.

    Only the numpy reconstruction functions those need are allowed; anything else (the way a
    malicious pickle runs code) is refused.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data batch")


def _unpickle(fh, name: str) -> dict:
    try:
        batch = _RestrictedUnpickler(fh, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DataError(f"{name}: not a valid CIFAR-10 python batch ({exc})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{name}: not a valid CIFAR-10 python batch (not a dict)")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"{name}: CIFAR-10 batch lacks 'data' or 'labels'")
    return batch


def _batch_arrays(batch: dict, name: str) -> tuple[np.ndarray, np.ndarray]:
    data = np.asarray(batch["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{name}: expected rows of 3072 bytes (32x32x3), got shape {data.shape}")
    x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # CHW planes → (N, 32, 32, 3) RGB
    y = np.asarray(batch["labels"], dtype=np.int64)
    if len(y) != len(x):
        raise DataError(f"{name}: {len(x)} images but {len(y)} labels")
    return np.ascontiguousarray(x), y


def _from_batches(read, names_train, name_test, source: str) -> ImageDataset:
    parts = [_batch_arrays(_unpickle(read(n), n), n) for n in names_train]
    x_test, y_test = _batch_arrays(_unpickle(read(name_test), name_test), name_test)
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    if len(x_train) == 0 or len(x_test) == 0:
        raise DataError(f"{source}: empty split in the CIFAR-10 batches")
    return ImageDataset(x_train, y_train, x_test, y_test, CIFAR10_CLASSES, source)


TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))


def _load_python_batches(root: Path) -> ImageDataset:
    for n in (*TRAIN_BATCHES, "test_batch"):
        if not (root / n).is_file():
            raise DataError(f"{root / n}: missing CIFAR-10 batch file")
    return _from_batches(lambda n: open(root / n, "rb"), TRAIN_BATCHES, "test_batch", str(root))


def _load_python_tarball(path: Path) -> ImageDataset:
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            for n in (*TRAIN_BATCHES, "test_batch"):
                if n not in members:
                    raise DataError(f"{path}: archive lacks {n}")
            return _from_batches(lambda n: tar.extractfile(members[n]), TRAIN_BATCHES,
                                 "test_batch", str(path))
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{path}: corrupt or unreadable archive ({exc})") from None


# --- Keras' downloader ----------------------------------------------------------------------

def _load_keras_download() -> ImageDataset:
    from keras.datasets import cifar10

    try:
        (x_train, y_train), (x_test, y_test) = cifar10.load_data()
    except Exception as exc:  # Keras wraps urllib's errors in a bare Exception: show its text
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise DataError(f"could not download CIFAR-10 (no network? {reason}): pass --data DIR with "
                        "the dataset on disk (DIR/train/<class>/*.jpg and DIR/test/<class>/*.jpg, or "
                        "the cifar-10-python.tar.gz archive)") from None
    return ImageDataset(x_train, y_train.reshape(-1).astype(np.int64), x_test,
                   y_test.reshape(-1).astype(np.int64), CIFAR10_CLASSES, "keras.datasets.cifar10")


def take_slice(data: ImageDataset, n_train: int | None, n_test: int | None, seed: int = 0) -> ImageDataset:
    """A class-balanced-ish random subset, for smoke runs and tests."""
    rng = np.random.default_rng(seed)

    def pick(x, y, n):
        if n is None or n >= len(x):
            return x, y
        idx = np.sort(rng.permutation(len(x))[:n])
        return x[idx], y[idx]

    x_train, y_train = pick(data.x_train, data.y_train, n_train)
    x_test, y_test = pick(data.x_test, data.y_test, n_test)
    return replace(data, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
