"""Image-folder datasets: ``DIR/train/<class>/`` and ``DIR/test/<class>/``, or ``DIR/<class>/``
cut into train and test by a fixed stratified rule. Any class names (2 to 1,000), any image
size, any format the runtime reads.

Every image goes once through ``runtime.image.preprocess.prepare``, the runtime's one preprocessing
path (decode, upright RGB, centre-crop, resize to the model's input size); the arrays are
cached as .npy files keyed by the file list, sizes, mtimes and the input size, so the next run
starts at once. Bad data is one DataError naming the path.
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Collection

import numpy as np

from runtime.atomic import atomic_write
from runtime.errors import DataError, ImageError
from runtime.image.preprocess import IMAGE_SUFFIXES, prepare
from runtime.model.contract import InputContract

from .progress import progress_bar

SPLITS = ("train", "test")
MIN_CLASSES, MAX_CLASSES = 2, 1000
# DIR/<class>/ datasets: a file is in test when the hash of its class and file name (with
# FLAT_SPLIT_SEED), read as a number in [0, 1), is below FLAT_TEST_FRACTION; a class's file of
# lowest hash is always in test, and of highest always in train. Fixed, not the run's seed, so
# evaluation and export find the same split from the files alone; per file, so a folder that
# grows (a labelled folder, round after round) never moves a file from one side to the other
# (only, in a class with no file under the fraction, the lowest file while a lower one comes).
FLAT_TEST_FRACTION = 0.2
FLAT_SPLIT_SEED = 0
FLAT_RULE = ("per file: blake2b of 'seed/class/file name' as a number in [0, 1); below test_fraction "
             "to test; a class's lowest always to test, its highest always to train; a class of one "
             "image trains only (listed in 'untested')")
DIGEST_BYTES = 16  # blake2b of each file's bytes: finds the same file in train and test

Files = list[tuple[Path, int]]  # (image file, class index), by class then file name
Log = Callable[[str], None]


@dataclass(frozen=True)
class FolderListing:
    class_names: tuple[str, ...]  # sorted folder names (CIFAR-10's canonical order is alphabetical)
    files: dict[str, Files]  # "train" / "test" → its files
    split: dict  # what config.json records: the layout; for DIR/<class>/ the rule and the test files


def list_folder(root: Path, test_files: Collection[str] | None = None,
                splits: Collection[str] = SPLITS) -> FolderListing:
    """The classes and files of the dataset at ``root``. A folder holding ``train/`` or ``test/``
    is the split layout (a split not in ``splits`` may be missing); any other is
    ``root/<class>/``, whose test split is ``test_files`` (paths relative to ``root``, as a run's
    config.json records them) or else the fixed rule."""
    if (root / "train").is_dir() or (root / "test").is_dir():
        return _list_split_layout(root, splits)
    return _list_flat_layout(root, test_files)


def _list_split_layout(root: Path, splits: Collection[str]) -> FolderListing:
    found = {}
    for split in SPLITS:
        if (root / split).is_dir():
            found[split] = _class_files(root / split)
        elif split in splits:
            raise DataError(f"{root / split}: missing split folder (expected {root}/{{train,test}}/<class>/*.jpg)")
    classes = {split: set(by_class) for split, by_class in found.items()}
    if len(classes) == 2 and classes["train"] != classes["test"]:
        differ = [f"only in {split}: {', '.join(sorted(only))}" for split, only in
                  (("train", classes["train"] - classes["test"]), ("test", classes["test"] - classes["train"])) if only]
        raise DataError(f"{root / 'test'}: its classes differ from {root / 'train'}'s ({'; '.join(differ)})")
    first = next(iter(found))
    class_names = _checked_classes(root / first, classes[first])
    files = {split: _labelled(found[split], class_names) if split in found else [] for split in SPLITS}
    return FolderListing(class_names, files, {"layout": "train/test"})


def _list_flat_layout(root: Path, test_files: Collection[str] | None) -> FolderListing:
    by_class = _class_files(root)
    class_names = _checked_classes(root, set(by_class))
    if test_files is None:
        chosen = _flat_test_rule(root, by_class)
    else:
        chosen = _recorded_test_files(root, by_class, test_files)
    files = {"train": [], "test": []}
    for index, name in enumerate(class_names):
        for f in by_class[name]:
            files["test" if _relative(root, f) in chosen else "train"].append((f, index))
    split = {"layout": "flat", "rule": FLAT_RULE, "seed": FLAT_SPLIT_SEED, "test_fraction": FLAT_TEST_FRACTION,
             "test_files": [_relative(root, f) for f, _ in files["test"]],
             "untested": [name for name in class_names if not any(_relative(root, f) in chosen for f in by_class[name])]}
    return FolderListing(class_names, files, split)


def _class_files(folder: Path) -> dict[str, list[Path]]:
    """``folder/<class>/*`` → {class: its image files, sorted}; hidden folders are skipped."""
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{folder}: no class folders (expected {folder}/<class>/*.jpg, or "
                        f"{folder}/train/<class>/ and {folder}/test/<class>/)")
    if len(classes) > MAX_CLASSES:
        raise DataError(f"{folder}: {len(classes):,} class folders; at most {MAX_CLASSES:,} classes are supported")
    by_class = {}
    for d in classes:
        images = sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DataError(f"{d}: class folder has no images ({', '.join(IMAGE_SUFFIXES)})")
        by_class[d.name] = images
    return by_class


def _checked_classes(folder: Path, names: set[str]) -> tuple[str, ...]:
    if len(names) < MIN_CLASSES:
        raise DataError(f"{folder}: only one class ({', '.join(names)}); a classifier needs at least "
                        f"{MIN_CLASSES} class folders")
    return tuple(sorted(names))


def _labelled(by_class: dict[str, list[Path]], class_names: tuple[str, ...]) -> Files:
    return [(f, index) for index, name in enumerate(class_names) for f in by_class[name]]


def _relative(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def flat_position(class_name: str, file_name: str) -> float:
    """Where a file falls in [0, 1) by the DIR/<class>/ rule: its name's hash, not its bytes
    (a file re-encoded in place keeps its side)."""
    digest = hashlib.blake2b(f"{FLAT_SPLIT_SEED}/{class_name}/{file_name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0 ** 64


def _flat_test_rule(root: Path, by_class: dict[str, list[Path]]) -> set[str]:
    """The test files of a DIR/<class>/ folder (``FLAT_RULE``); a class's split depends on its own
    files only, and each file's side on its own name."""
    chosen = set()
    for name, images in by_class.items():
        if len(images) < 2:
            continue  # one image: it trains, and the class goes untested (load_dataset says so)
        ranked = sorted(images, key=lambda f: flat_position(name, f.name))
        test = [f for f in ranked[1:-1] if flat_position(name, f.name) < FLAT_TEST_FRACTION]
        chosen.update(_relative(root, f) for f in [ranked[0], *test])
    return chosen


def _recorded_test_files(root: Path, by_class: dict[str, list[Path]], test_files: Collection[str]) -> set[str]:
    present = {_relative(root, f) for images in by_class.values() for f in images}
    missing = sorted(set(test_files) - present)
    if missing:
        raise DataError(f"{root / missing[0]}: missing, yet the run recorded it in its test split "
                        f"({len(missing)} such file(s)); pass the data the model was trained on")
    return set(test_files)


# --- decoding, once, into the cache --------------------------------------------------------

def _cache_key(files: Files, input_size: int) -> str:
    digest = hashlib.sha256(f"prepare {input_size}x{input_size}, digests\n".encode())
    for f, label in files:
        st = f.stat()
        digest.update(f"{f}|{st.st_size}|{st.st_mtime_ns}|{label}\n".encode())
    return digest.hexdigest()[:24]


def _decode(item: tuple[Path, int], contract: InputContract) -> tuple[np.ndarray, bytes]:
    """One file → ((S, S, 3) uint8 RGB at the contract's size, the digest of its bytes)."""
    path, _ = item
    try:
        image = prepare(path, contract)
        digest = hashlib.blake2b(path.read_bytes(), digest_size=DIGEST_BYTES).digest()
    except ImageError as exc:
        raise DataError(f"unreadable image {exc}") from None
    except OSError as exc:
        raise DataError(f"unreadable image {path}: {exc.strerror or exc}") from None
    return image, digest


def decode_split(split: str, files: Files, root: Path, cache_dir: Path, input_size: int,
                 quiet: bool | None = None, log: Log | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images (N, S, S, 3) uint8 RGB, labels (N,) int64, file digests (N,) S16) of ``files``,
    from the cache or decoded once into it."""
    key = _cache_key(files, input_size)
    cached = [cache_dir / f"{split}-{key}-{part}.npy" for part in ("x", "y", "h")]
    if all(p.exists() for p in cached):
        try:
            return tuple(np.load(p) for p in cached)
        except (OSError, ValueError):
            pass  # a damaged cache is rebuilt below
    if log is not None:
        log(f"decoding the {split} split once ({len(files):,} images in {root}); cached in {cache_dir}")
    t0 = time.perf_counter()
    decode = partial(_decode, contract=InputContract(height=input_size, width=input_size))
    images, digests = [], []
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool, \
            progress_bar(len(files), f"decoding {split}", "img", quiet) as bar:
        for image, digest in pool.map(decode, files, chunksize=256):
            images.append(image)
            digests.append(digest)
            bar.update(1)
    if log is not None:
        log(f"decoded {len(files):,} {split} images in {time.perf_counter() - t0:.0f} s")
    arrays = (np.stack(images), np.asarray([label for _, label in files], dtype=np.int64),
              np.asarray(digests, dtype=f"S{DIGEST_BYTES}"))
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        for path, array in zip(cached, arrays):
            with atomic_write(path, "wb") as fh:
                np.save(fh, array)
    except OSError:
        pass  # the cache is an optimisation; an unwritable one must not stop training
    return arrays


def warn_duplicates(train: Files, train_digests: np.ndarray, test: Files, test_digests: np.ndarray,
                    log: Log) -> int:
    """Say, in one warning line, how many test files are byte-identical to a training file, with
    one example pair. Returns that count."""
    seen = {bytes(d): f for (f, _), d in zip(train, train_digests)}
    pairs = [(f, seen[bytes(d)]) for (f, _), d in zip(test, test_digests) if bytes(d) in seen]
    if pairs:
        log(f"warning: {len(pairs):,} test image(s) are byte-identical to training images, e.g. {pairs[0][0]} "
            f"and {pairs[0][1]}; test accuracy counts them as unseen: remove one of each pair")
    return len(pairs)
