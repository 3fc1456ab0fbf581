"""Atomic file writes: write a temporary file beside the target, fsync, then rename.

A crash or Ctrl+C leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator


def give_plain_mode(path: Path) -> None:
    """mkstemp creates 0600 files; give ``path`` the permissions a plain open() would (0644
    under the usual umask), so a finished file is as readable as any other."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it is renamed onto ``target``.

    Use this for writers that want a filename (Keras' ``model.save``, matplotlib's
    ``savefig``, onnx's ``save``). ``suffix`` defaults to the target's, since some writers
    choose their format from it.
    """
    tmp_path = temp_beside(target, suffix)
    try:
        yield tmp_path
        commit(tmp_path, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def temp_beside(target: str | os.PathLike, suffix: str | None = None) -> Path:
    """A new empty hidden file beside ``target`` (its folder created), with plain permissions,
    for a writer that finishes later (``VideoSaver``); ``commit`` it or unlink it.
    ``suffix`` defaults to the target's."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or "".join(target.suffixes)
                               or ".tmp", dir=target.parent)
    os.close(fd)
    give_plain_mode(Path(tmp))
    return Path(tmp)


def commit(tmp: Path, target: str | os.PathLike) -> None:
    """Flush the finished ``tmp`` to disk, then rename it onto ``target``."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, target)


@contextlib.contextmanager
def atomic_write(target: str | os.PathLike, mode: str = "w", encoding: str | None = None) -> Iterator[IO]:
    """``open()`` a temporary file beside ``target``; renamed onto it when the block succeeds."""
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    with atomic_path(target) as tmp:
        with open(tmp, mode, encoding=encoding) as fh:
            yield fh


def replace_marked(text: str, begin: str, end: str, block: str, where: str = "the text") -> str:
    """``text`` with what lies between its one ``begin`` … ``end`` pair replaced by ``block``
    (generated figures inside a hand-written page)."""
    from runtime.errors import CifarEdgeError

    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise CifarEdgeError(f"{where} needs exactly one {begin} … {end} pair, in that order")
    head, rest = text.split(begin, 1)
    return f"{head}{begin}\n{block}\n{end}{rest.split(end, 1)[1]}"


def write_marked(path: str | os.PathLike, begin: str, end: str, block: str) -> None:
    """Replace the marked block of the file at ``path`` (``replace_marked``), atomically."""
    text = replace_marked(Path(path).read_text(encoding="utf-8"), begin, end, block, str(path))
    with atomic_write(path) as fh:
        fh.write(text)
