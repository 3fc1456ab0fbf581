"""Turn command-line SOURCES (files, directories, globs, ``-`` for stdin) into image paths,
and a labelled folder (``split/<class>/*.jpg``) into (path, class index) pairs."""

from __future__ import annotations

import glob
import sys
from pathlib import Path
from typing import Iterable, Iterator, Sequence, TextIO

from runtime.errors import DataError, SourceError
from runtime.image.preprocess import IMAGE_SUFFIXES

_GLOB_CHARS = set("*?[")


def expand_sources(sources: Iterable[str], stdin: TextIO | None = None) -> Iterator[str]:
    """Yield image paths in a stable order.

    A directory yields its image files recursively (sorted); a glob its matches; ``-`` reads
    one path per line from stdin. A plain path is yielded even when it does not exist, so the
    caller reports it on its own line. A directory or glob with no images is an error.
    """
    for source in sources:
        if source == "-":
            for line in (stdin or sys.stdin):
                line = line.strip()
                if line:
                    yield line
            continue
        path = Path(source)
        if path.is_dir():
            found = sorted(str(p) for p in path.rglob("*")
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise SourceError(f"{source}: directory contains no images "
                                  f"({', '.join(IMAGE_SUFFIXES)})")
            yield from found
        elif not path.exists() and _GLOB_CHARS & set(source):
            found = sorted(p for p in glob.glob(source, recursive=True) if Path(p).is_file())
            if not found:
                raise SourceError(f"{source}: pattern matches no files")
            yield from found
        else:
            yield source


def labelled_images(split_dir: str | Path, class_names: Sequence[str]) -> list[tuple[Path, int]]:
    """``split_dir/<class>/*.jpg`` -> (path, index in ``class_names``) pairs, by class then
    file name. A folder's name is its label, matched against ``class_names`` (a model's own);
    a folder that is no class name is an error, a class with no folder is not.
    """
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: no such folder (expected {split_dir}/<class>/*.jpg)")
    index = {name: i for i, name in enumerate(class_names)}
    folders = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    unknown = [name for name in folders if name not in index]
    if unknown:
        raise DataError(f"{split_dir}: folder(s) {', '.join(unknown)} name no class of the model "
                        f"(its classes: {', '.join(class_names)})")
    found = [(path, index[name]) for name in folders
             for path in sorted((split_dir / name).iterdir())
             if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES]
    if not found:
        raise DataError(f"{split_dir}: no images ({', '.join(IMAGE_SUFFIXES)}) in class folders")
    return found
