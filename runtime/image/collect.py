"""``Collector``: keep what the model is unsure of (``cifar-run --collect DIR``).

A frame or image whose top probability is below ``below`` is saved whole as a JPEG in DIR,
and a JSON line (time, model, top-k, where it came from) is appended to ``DIR/index.jsonl``
once the JPEG is in place, so every line names a complete file. At most one is saved every
``every_s`` seconds, and the folder is kept under ``max_bytes``: the oldest JPEGs (and their
lines) go first. Every JPEG is written atomically (``runtime.atomic``); a crash leaves at
most a hidden temporary file, removed by the next Collector on the folder.

On disk::

    DIR/index.jsonl                       one JSON object per saved file, oldest first (time, file,
                                          model and its sha256, source, frame, label, top-k)
    DIR/20261202T152400.123Z-000001.jpg   the full frame or image, named by UTC time
    DIR/labelled/<class>/*.jpg            frames labelled in the browser (``runtime.web.labels``):
                                          out of the index, never counted or pruned here

``take`` and ``mark`` (the labelling page, on the server's thread) and ``offer`` (the camera
loop) change the folder under one lock, so the index always names exactly the JPEGs left.
Across processes, ``exclusive=True`` (what the commands pass) holds ``DIR/.lock`` (an
``flock``, released when the process ends however it ends): a second cifar-run or cifar-serve
on the folder is refused in one line instead of each rewriting the index from its own view.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
from PIL import Image

from runtime.atomic import atomic_write
from runtime.errors import OptionError, SourceError

if TYPE_CHECKING:
    from runtime.model.classifier import Prediction

INDEX = "index.jsonl"
LOCK = ".lock"  # held by the one process collecting into or labelling the folder
_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3,
               "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3}
_DURATION_UNITS = {"": 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "min": 60.0, "h": 3600.0}
_AMOUNT = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*")


def _amount(value: str, units: dict, what: str, example: str) -> float:
    match = _AMOUNT.fullmatch(str(value).lower())
    if match is None or match.group(2) not in units:
        raise OptionError(f"{value!r} is not {what}, e.g. {example} (units: "
                          f"{', '.join(u for u in units if u)})")
    return float(match.group(1)) * units[match.group(2)]


def parse_size(value: str) -> int:
    """"500MB" -> 500_000_000 bytes (kB/MB/GB are powers of 1000, KiB/MiB/GiB of 1024; no
    unit: bytes). An OptionError for anything else."""
    return int(_amount(value, _SIZE_UNITS, "a size", "500MB or 2GiB"))


def parse_duration(value: str) -> float:
    """"2s" -> 2.0, "500ms" -> 0.5, "1m" -> 60.0 seconds (no unit: seconds)."""
    return _amount(value, _DURATION_UNITS, "a duration", "2s or 500ms")


@dataclass(frozen=True)
class CollectOptions:
    """What ``--collect DIR`` keeps, each default the CLI's."""

    folder: Path  # where the JPEGs and index.jsonl go (created)
    below: float = 0.6  # keep an input whose top probability is under this
    every_s: float = 2.0  # s: at most one saved per this interval (0: every one), so a scene the
    # model is unsure of for minutes fills the folder with variety, not 30 copies a second
    max_bytes: int = 500 * 1000 ** 2  # bytes of JPEGs and index together; the oldest go first
    quality: int = 90  # JPEG quality: the frames are for labelling and retraining


@dataclass
class _Saved:
    name: str  # the JPEG's file name in the folder
    size: int  # its bytes
    line: bytes  # its index line (b"" for a JPEG the index does not name)


class Collector:
    """Saves the inputs ``offer`` is given whose top probability is below the threshold, rate
    limited and bounded on disk. ``clock`` (monotonic seconds) and ``now`` (a UTC datetime) are
    injectable for tests."""

    def __init__(self, options: CollectOptions, model: str, *, clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], datetime] = lambda: datetime.now(timezone.utc), exclusive: bool = False,
                 model_sha256: str | None = None):
        self.options, self.model, self.clock, self.now = options, model, clock, now
        self.model_sha256 = model_sha256  # which version of the file guessed (model_file_id); None: not said
        self.folder = Path(options.folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise SourceError(f"--collect {self.folder}: exists and is not a directory")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._claim = claim_folder(self.folder) if exclusive else None
        self.lock = threading.Lock()  # offer, take and mark change the folder and index one at a time
        self.saved: deque[_Saved] = self._read_folder()
        self.last_saved: float | None = None
        self.count = 0  # saved by this Collector
        self.removed = 0  # removed to stay under max_bytes

    @property
    def bytes_on_disk(self) -> int:
        return sum(s.size + len(s.line) for s in self.saved)

    def _read_folder(self) -> deque[_Saved]:
        """What an earlier run left: its JPEGs oldest first, each with its index line; the
        hidden temporary files of a write that never finished are removed."""
        for stale in self.folder.glob(".*.jpg"):
            stale.unlink(missing_ok=True)
        lines = {}
        index = self.folder / INDEX
        if index.exists():
            for raw in index.read_bytes().splitlines(keepends=True):
                try:
                    lines[json.loads(raw)["file"]] = raw if raw.endswith(b"\n") else raw + b"\n"
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a crash, or not ours
        jpegs = sorted(p for p in self.folder.glob("*.jpg") if not p.name.startswith("."))
        saved = deque(_Saved(p.name, p.stat().st_size, lines.get(p.name, b"")) for p in jpegs)
        if index.exists() and index.read_bytes() != b"".join(s.line for s in saved):
            self._rewrite_index(saved)  # lines of removed files, or a torn last line
        return saved

    def wants(self, confidence: float) -> bool:
        """Whether an input of this top probability would be saved now."""
        if confidence >= self.options.below:
            return False
        return self.last_saved is None or self.clock() - self.last_saved >= self.options.every_s

    def offer(self, prediction: "Prediction", *, frame_bgr: np.ndarray | None = None,
              image_rgb: Image.Image | None = None, source: str = "", frame: int | None = None) -> Path | None:
        """Save this input if the model is unsure of it and the rate allows: the JPEG's path,
        or None. Give the camera's ``frame_bgr`` ((H, W, 3) uint8 BGR) or a decoded ``image_rgb``."""
        if not self.wants(prediction.confidence):
            return None
        jpeg = _encode(frame_bgr, image_rgb, self.options.quality)
        stamp = self.now()
        name = f"{stamp:%Y%m%dT%H%M%S}.{stamp.microsecond // 1000:03d}Z-{self.count + 1:06d}.jpg"
        record = {"time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"), "file": name,
                  "model": self.model, **({"model_sha256": self.model_sha256} if self.model_sha256 else {}),
                  "source": source, **({"frame": frame} if frame is not None else {}),
                  **prediction.to_dict()}
        line = (json.dumps(record) + "\n").encode("utf-8")
        if len(jpeg) + len(line) > self.options.max_bytes:
            return None  # one frame larger than the whole cap: never saved
        target = self.folder / name
        with self.lock:
            self._make_room(len(jpeg) + len(line))
            with atomic_write(target, "wb") as fh:
                fh.write(jpeg)
            self._append(line)  # only once the JPEG is in place
            self.saved.append(_Saved(name, len(jpeg), line))
        self.last_saved = self.clock()
        self.count += 1
        return target

    def pending(self) -> list[dict]:
        """The index records of the JPEGs still in the folder, oldest first."""
        with self.lock:
            return [json.loads(s.line) for s in self.saved if s.line]

    def take(self, name: str, move: Callable[[Path], None]) -> dict:
        """Take the JPEG ``name`` out of the collection: ``move(path)`` moves or deletes it, then
        its line leaves the index (a crash between the two leaves a line the next Collector
        drops), so it is neither listed nor counted against max_bytes again. Its record;
        KeyError when the index does not name it."""
        with self.lock:
            entry = self._entry(name)
            move(self.folder / name)
            self.saved.remove(entry)
            self._rewrite_index(self.saved)
        return json.loads(entry.line)

    def mark(self, name: str, **fields) -> dict:
        """Add ``fields`` to the index line of ``name`` (``skipped``); the new record."""
        with self.lock:
            entry = self._entry(name)
            record = {**json.loads(entry.line), **fields}
            entry.line = (json.dumps(record) + "\n").encode("utf-8")
            self._rewrite_index(self.saved)
        return record

    def _entry(self, name: str) -> _Saved:
        for entry in self.saved:
            if entry.name == name and entry.line:
                return entry
        raise KeyError(name)

    def _make_room(self, needed: int) -> None:
        """Remove the oldest JPEGs until ``needed`` more bytes fit under max_bytes: their
        lines leave the index first, so the index never names a missing file for long."""
        gone = []
        while self.saved and self.bytes_on_disk + needed > self.options.max_bytes:
            gone.append(self.saved.popleft())
        if not gone:
            return
        self._rewrite_index(self.saved)
        for old in gone:
            (self.folder / old.name).unlink(missing_ok=True)
        self.removed += len(gone)

    def _rewrite_index(self, saved) -> None:
        with atomic_write(self.folder / INDEX, "wb") as fh:
            fh.write(b"".join(s.line for s in saved))

    def _append(self, line: bytes) -> None:
        append_line(self.folder / INDEX, line)

    def close(self) -> None:
        """Let another process have the folder (the lock of ``exclusive=True``)."""
        if self._claim is not None:
            os.close(self._claim)
            self._claim = None

    def summary(self) -> str:
        return (f"collected {self.count} input(s) below {self.options.below:.0%} confidence in {self.folder}"
                + (f" ({self.removed} oldest removed to stay under {self.options.max_bytes} bytes)"
                   if self.removed else ""))


def model_file_id(path: str | os.PathLike) -> str | None:
    """The first 16 hex digits of the model file's sha256: tells the versions of one path apart
    (``--reload`` keeps the name); None if it cannot be read."""
    import hashlib

    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()[:16]
    except OSError:
        return None


def claim_folder(folder: Path) -> int | None:
    """Hold ``folder/.lock`` for this process (an exclusive, non-blocking ``flock``; the file says
    whose): the open descriptor, or a SourceError naming the process that holds it. None where
    the OS has no flock (Windows): one process per folder is then the user's to keep."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise SourceError(f"--collect {folder}: cannot write there ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 64).decode("ascii", "replace").strip() or "another process"
        os.close(fd)
        raise SourceError(f"--collect {folder}: in use by {holder}; one cifar-run or cifar-serve per "
                          "folder (to label while collecting: cifar-run --camera SRC --collect DIR "
                          "--serve PORT)") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()}\n".encode())
    return fd


def append_line(path: Path, line: bytes) -> None:
    """One write of a whole line, flushed to disk (O_APPEND: never interleaved)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def _encode(frame_bgr: np.ndarray | None, image_rgb: Image.Image | None, quality: int) -> bytes:
    if frame_bgr is not None:
        frame_bgr = np.ascontiguousarray(frame_bgr)  # (H, W, 3) uint8 BGR
        height, width = frame_bgr.shape[:2]
        image_rgb = Image.frombuffer("RGB", (width, height), frame_bgr, "raw", "BGR", 0, 1)
    if image_rgb is None:
        raise ValueError("offer needs frame_bgr or image_rgb")
    buffer = BytesIO()
    image_rgb.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
