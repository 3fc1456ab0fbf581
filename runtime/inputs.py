"""Turn command-line SOURCES (files, directories, globs, ``-`` for stdin) into image paths."""

from __future__ import annotations

import glob
import sys
from pathlib import Path
from typing import Iterable, Iterator, TextIO

from .errors import SourceError
from .preprocess import IMAGE_SUFFIXES

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
