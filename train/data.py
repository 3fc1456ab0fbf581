"""CIFAR-10 loading: an image-folder tree, the official python batches, or Keras' downloader.

Every loader returns the same ``Cifar10`` arrays: (N, 32, 32, 3) uint8 RGB images and (N,)
int labels. Decoded folders are cached as .npy files keyed by the file list, sizes and mtimes,
so the second run starts at once. Images are decoded through ``runtime.preprocess.load_image``,
the one decoding path the runtime uses too.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from runtime.contract import CIFAR10_CLASSES
from runtime.errors import DataError, ImageError
from runtime.preprocess import IMAGE_SUFFIXES, load_image
from runtime.providers import cache_root
from runtime.atomic import atomic_write

from .progress import progress_bar

IMAGE_SHAPE = (32, 32, 3)
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Cifar10:
    x_train: np.ndarray  # (50000, 32, 32, 3) uint8 RGB
    y_train: np.ndarray  # (50000,) int64 class index
    x_test: np.ndarray  # (10000, 32, 32, 3) uint8 RGB
    y_test: np.ndarray  # (10000,) int64
    class_names: tuple[str, ...]
    source: str  # where it came from, for config.json / reports


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


def load_cifar10(data: str | os.PathLike | None = None, cache_dir: Path | None = None,
                 splits: tuple[str, ...] = SPLITS, quiet: bool | None = None,
                 log: Callable[[str], None] | None = None) -> Cifar10:
    """Load CIFAR-10 from ``data``: a folder tree, a ``cifar-10-batches-py`` folder, a
    ``cifar-10-python.tar.gz``, or None for Keras' downloader.

    Decoding a folder the first time takes a while (about 30 s for 60,000 JPEGs on 2 cores):
    ``log`` gets a line saying so and where the cache goes, with a progress bar on a terminal
    unless ``quiet``.
    """
    check_data_path(data)
    if data is None:
        return _load_keras_download()
    path = Path(data)
    if path.is_file():
        return _load_python_tarball(path)
    if (path / "data_batch_1").exists() or (path / "cifar-10-batches-py").is_dir():
        root = path if (path / "data_batch_1").exists() else path / "cifar-10-batches-py"
        return _load_python_batches(root)
    for name in ("cifar-10-python.tar.gz", "cifar-10-python.tgz"):
        if (path / name).is_file():
            return _load_python_tarball(path / name)
    # Resolved, so "../data" and "/abs/data" share one cache entry.
    return _load_folder(path.resolve(), cache_dir or default_cache_dir(), splits, quiet, log)


# --- image folders ------------------------------------------------------------------------

def _list_split(root: Path, split: str) -> tuple[tuple[str, ...], list[tuple[Path, int]]]:
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: missing split folder (expected {root}/{{train,test}}/<class>/*.jpg)")
    class_dirs = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    missing = [c for c in CIFAR10_CLASSES if c not in class_dirs]
    extra = [c for c in class_dirs if c not in CIFAR10_CLASSES]
    if missing:
        raise DataError(f"{split_dir}: class folder(s) missing: {', '.join(missing)}")
    if extra:
        raise DataError(f"{split_dir}: unexpected class folder(s): {', '.join(extra)} "
                        f"(CIFAR-10 has exactly {', '.join(CIFAR10_CLASSES)})")
    files = []
    for index, name in enumerate(CIFAR10_CLASSES):
        for f in sorted((split_dir / name).iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                files.append((f, index))
    if not files:
        raise DataError(f"{split_dir}: empty split, no images ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    return CIFAR10_CLASSES, files


def _cache_key(files: list[tuple[Path, int]]) -> str:
    digest = hashlib.sha256()
    for f, label in files:
        st = f.stat()
        digest.update(f"{f}|{st.st_size}|{st.st_mtime_ns}|{label}\n".encode())
    return digest.hexdigest()[:24]


def _decode(item: tuple[Path, int]) -> np.ndarray:
    path, _ = item
    try:
        image = load_image(path)
    except ImageError as exc:
        raise DataError(f"unreadable image {exc}") from None
    if image.size != IMAGE_SHAPE[:2]:
        raise DataError(f"{path}: image is {image.size[0]}x{image.size[1]}, expected 32x32 "
                        "(CIFAR-10 images are 32x32 RGB)")
    return np.asarray(image, dtype=np.uint8)


def _load_split(root: Path, split: str, cache_dir: Path, quiet: bool | None = None,
                log: Callable[[str], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    _, files = _list_split(root, split)
    key = _cache_key(files)
    x_cache = cache_dir / f"{split}-{key}-x.npy"
    y_cache = cache_dir / f"{split}-{key}-y.npy"
    if x_cache.exists() and y_cache.exists():
        try:
            return np.load(x_cache), np.load(y_cache)
        except (OSError, ValueError):
            pass  # a damaged cache is rebuilt below
    if log is not None:
        log(f"decoding the {split} split once ({len(files):,} images in {root}); cached in {cache_dir}")
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool, \
            progress_bar(len(files), f"decoding {split}", "img", quiet) as bar:
        images = []
        for image in pool.map(_decode, files, chunksize=256):
            images.append(image)
            bar.update(1)
    if log is not None:
        log(f"decoded {len(files):,} {split} images in {time.perf_counter() - t0:.0f} s")
    x = np.stack(images)
    y = np.asarray([label for _, label in files], dtype=np.int64)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(x_cache, "wb") as fh:
            np.save(fh, x)
        with atomic_write(y_cache, "wb") as fh:
            np.save(fh, y)
    except OSError:
        pass  # the cache is an optimisation; an unwritable one must not stop training
    return x, y


def _load_folder(root: Path, cache_dir: Path, splits: tuple[str, ...], quiet: bool | None = None,
                 log: Callable[[str], None] | None = None) -> Cifar10:
    empty = np.zeros((0, *IMAGE_SHAPE), np.uint8), np.zeros((0,), np.int64)
    x_train, y_train = _load_split(root, "train", cache_dir, quiet, log) if "train" in splits else empty
    x_test, y_test = _load_split(root, "test", cache_dir, quiet, log) if "test" in splits else empty
    return Cifar10(x_train, y_train, x_test, y_test, CIFAR10_CLASSES, str(root))


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


def _from_batches(read, names_train, name_test, source: str) -> Cifar10:
    parts = [_batch_arrays(_unpickle(read(n), n), n) for n in names_train]
    x_test, y_test = _batch_arrays(_unpickle(read(name_test), name_test), name_test)
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    if len(x_train) == 0 or len(x_test) == 0:
        raise DataError(f"{source}: empty split in the CIFAR-10 batches")
    return Cifar10(x_train, y_train, x_test, y_test, CIFAR10_CLASSES, source)


TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))


def _load_python_batches(root: Path) -> Cifar10:
    for n in (*TRAIN_BATCHES, "test_batch"):
        if not (root / n).is_file():
            raise DataError(f"{root / n}: missing CIFAR-10 batch file")
    return _from_batches(lambda n: open(root / n, "rb"), TRAIN_BATCHES, "test_batch", str(root))


def _load_python_tarball(path: Path) -> Cifar10:
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

def _load_keras_download() -> Cifar10:
    from keras.datasets import cifar10

    try:
        (x_train, y_train), (x_test, y_test) = cifar10.load_data()
    except Exception as exc:  # Keras wraps urllib's errors in a bare Exception: show its text
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise DataError(f"could not download CIFAR-10 (no network? {reason}): pass --data DIR with "
                        "the dataset on disk (DIR/train/<class>/*.jpg and DIR/test/<class>/*.jpg, or "
                        "the cifar-10-python.tar.gz archive)") from None
    return Cifar10(x_train, y_train.reshape(-1).astype(np.int64), x_test,
                   y_test.reshape(-1).astype(np.int64), CIFAR10_CLASSES, "keras.datasets.cifar10")


def take_slice(data: Cifar10, n_train: int | None, n_test: int | None, seed: int = 0) -> Cifar10:
    """A class-balanced-ish random subset, for smoke runs and tests."""
    rng = np.random.default_rng(seed)

    def pick(x, y, n):
        if n is None or n >= len(x):
            return x, y
        idx = np.sort(rng.permutation(len(x))[:n])
        return x[idx], y[idx]

    x_train, y_train = pick(data.x_train, data.y_train, n_train)
    x_test, y_test = pick(data.x_test, data.y_test, n_test)
    return Cifar10(x_train, y_train, x_test, y_test, data.class_names, data.source)
