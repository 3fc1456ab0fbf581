"""``--replay``: fine-tune on a few new images without forgetting what the model knew.

A labelled folder (``cifar-run --collect``, then the labelling page) holds what the deployed
model was unsure of: many images of a new class, a handful of each class it already had, none
of a class it was always sure of. Fine-tuned on that alone, the model learns the new class and
forgets the others (measured in docs/running.md: 90.4% -> 2-51% on CIFAR-10's classes, one of
them gone). ``with_replay`` makes the folder a run trains on: every image of the labelled
folder and ``per_class`` training images of each class of the original data (rehearsal, the
standard remedy), in ``RUN/data/<class>/``. Pure filesystem work, no Keras.

The folder is a snapshot: the labelled folder can grow while the run trains, and the run's
config.json, cifar-eval and cifar-export all read the snapshot. Files are hard links where the
filesystem allows (no bytes copied), copies elsewhere; it is built beside its place and renamed
into it, so a failure leaves the previous snapshot or none. ``replay.json`` in it says what it
holds (a file beside the class folders, which the loader ignores).
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from runtime.atomic import atomic_write
from runtime.errors import DataError
from runtime.image.preprocess import IMAGE_SUFFIXES

MANIFEST = "replay.json"
DEFAULT_PER_CLASS = 100
_WORDS = {"link": "hard links", "copy": "copies"}
REPLAY_SEED = 0  # which images of the original data: fixed, so a second run picks the same ones


def class_folders(root: Path) -> dict[str, list[Path]]:
    """``root/<class>/`` → {class: its image files, sorted}; hidden folders skipped."""
    found = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if images:
            found[folder.name] = images
    return found


def _training_classes(source: Path) -> dict[str, list[Path]]:
    """The training images of an image-folder dataset, by class: ``source/train/<class>/`` or
    ``source/<class>/``."""
    if not source.is_dir():
        raise DataError(f"--replay {source}: not a folder (give the image folder the model was trained on, "
                        "e.g. ../shared/data/cifar10, or DIR/<class>/ of your own)")
    root = source / "train" if (source / "train").is_dir() else source
    found = class_folders(root)
    if not found:
        raise DataError(f"--replay {source}: no class folders with images (expected {source}/train/<class>/ "
                        f"or {source}/<class>/)")
    return found


def _pick(images: list[Path], name: str, n: int) -> list[Path]:
    """``n`` of a class's images, spread over the class (seeded by its name), in name order."""
    if n >= len(images):
        return images
    rng = np.random.default_rng([REPLAY_SEED, zlib.crc32(name.encode())])
    return sorted(images[i] for i in rng.choice(len(images), n, replace=False))


def _place(src: Path, dst: Path) -> str:
    """A hard link where the filesystem allows, else a copy (mtime kept): how it was placed."""
    try:
        os.link(src, dst)
        return "link"
    except OSError:
        shutil.copy2(src, dst)
        return "copy"


def with_replay(data: str | os.PathLike, source: str | os.PathLike, into: str | os.PathLike,
                per_class: int = DEFAULT_PER_CLASS, log: Callable[[str], None] = lambda _m: None) -> Path:
    """Build ``into`` (a ``DIR/<class>/`` folder): every image of ``data`` (a ``DIR/<class>/``
    folder) under its own name, and ``per_class`` images of each class of ``source``'s training
    split as ``replay-<name>``. Returns ``into``."""
    data, source, into = Path(data).resolve(), Path(source).resolve(), Path(into)
    if (data / "train").is_dir() or (data / "test").is_dir():
        raise DataError(f"--replay adds to a DIR/<class>/ folder (a labelled folder); {data} has train/ and "
                        f"test/: put the images you add into {data}/train/<class>/ yourself")
    own, old = class_folders(data), _training_classes(source)
    if not own:
        raise DataError(f"{data}: no class folders with images (label some frames first)")
    tmp = into.with_name(f".{into.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    placed: dict[str, int] = {}
    added = {name: _pick(images, name, per_class) for name, images in old.items()}
    for name, files in [*((n, [(f, f.name) for f in fs]) for n, fs in own.items()),
                        *((n, [(f, f"replay-{f.name}") for f in fs]) for n, fs in added.items())]:
        (tmp / name).mkdir(parents=True, exist_ok=True)
        for src, dst_name in files:
            how = _place(src, tmp / name / dst_name)
            placed[how] = placed.get(how, 0) + 1
    manifest = {"data": str(data), "source": str(source), "per_class": per_class,
                "own": {n: len(fs) for n, fs in own.items()}, "replayed": {n: len(fs) for n, fs in added.items()}}
    with atomic_write(tmp / MANIFEST) as fh:
        json.dump(manifest, fh, indent=2)
    shutil.rmtree(into, ignore_errors=True)
    os.replace(tmp, into)
    new = sorted(set(own) - set(old))
    log(f"replay: {sum(manifest['own'].values()):,} images of {len(own)} classes from {data}, and "
        f"{sum(manifest['replayed'].values()):,} training images of {len(old)} classes from {source} "
        f"(up to {per_class} a class), in {into} ({', '.join(f'{v:,} {_WORDS[k]}' for k, v in sorted(placed.items()))})"
        + (f"; new classes: {', '.join(new)}" if new else ""))
    return into


def init_class_names(init_path: Path) -> list[str] | None:
    """The classes the ``--init`` model knew, from the config.json of its run, if it has one."""
    try:
        names = json.loads((Path(init_path).parent / "config.json").read_text()).get("class_names")
    except (OSError, ValueError, AttributeError):
        return None
    return list(names) if isinstance(names, list) else None


def forgetting_warning(init_path: Path, data: str | os.PathLike, class_names: tuple[str, ...],
                       counts: list[int]) -> str | None:
    """The warning of a fine-tuning run that extends the --init model (a labelled folder, or data
    with half its classes or more) and will lose classes it knew: some are not in the data at all,
    or some have a few images each. None otherwise: other classes of one's own are no extension."""
    from runtime.web.labels import LOG

    known = init_class_names(init_path)
    if not known:
        return None
    extends = (Path(data) / LOG).is_file() or 2 * len(set(known) & set(class_names)) >= len(known)
    if not extends:
        return None
    missing = [c for c in known if c not in class_names]
    few = [c for c, n in zip(class_names, counts) if c in known and n < 20]
    if not missing and not few:
        return None
    said = []
    if missing:
        said.append(f"{len(missing)} of the {len(known)} classes {init_path.name} knew are not in the data "
                    f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}): the new model will not know them")
    if few:
        said.append(f"{len(few)} have under 20 training images ({', '.join(few[:5])}{', ...' if len(few) > 5 else ''}):"
                    " expect them to be forgotten")
    if (Path(data) / MANIFEST).is_file():
        return "warning: " + "; ".join(said) + ". To keep them, replay more: raise --replay-images"
    return ("warning: " + "; ".join(said) + ". To keep them, add images of the original data: "
            "--replay DIR (the folder the model was trained on; docs/training.md)")
