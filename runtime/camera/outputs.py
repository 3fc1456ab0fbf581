"""Where classified frames go: drawn on (``annotate_frame``), saved as a video or a snapshot,
shown in a window. Writes are atomic (``runtime.atomic``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Protocol

import numpy as np

from runtime.atomic import atomic_path, commit, temp_beside
from runtime.camera.sources import opencv
from runtime.errors import SourceError
from runtime.image.draw import BAND_RGB, BOX_RGB


class Overlay(Protocol):
    """What ``annotate_frame`` draws (a ``runtime.camera.loop.FrameResult``)."""

    box: tuple[int, int, int, int] | None  # the classified region; None: the whole frame

    def overlay_lines(self) -> list[tuple[str, tuple[int, int, int]]]: ...


def annotate_frame(frame_bgr: np.ndarray, result: Overlay) -> np.ndarray:
    """A copy of ``frame_bgr`` with the classified box, label, confidence, time and FPS."""
    cv2 = opencv()
    out = frame_bgr.copy()
    h, w = out.shape[:2]
    scale = max(0.35, min(w, h) / 600.0)  # text scale relative to the frame size
    thick = max(1, round(scale * 2))
    if result.box is not None:
        x0, y0, x1, y1 = result.box
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), BOX_RGB[::-1], thick)
    y = 0
    for text, rgb in result.overlay_lines():
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        cv2.rectangle(out, (0, y), (tw + 8, y + th + base + 6), BAND_RGB[::-1], -1)
        cv2.putText(out, text, (4, y + th + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, rgb[::-1], thick,
                    cv2.LINE_AA)
        y += th + base + 6
    return out


_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}


class VideoSaver:
    """Write frames to a temporary file beside ``target``; ``close`` flushes it and renames
    it into place (``runtime.atomic``), so ``target`` is never a half-written video.

    Closing finalises the container, so a run stopped by Ctrl+C or SIGTERM (which still
    reaches ``close`` through ``finally``) leaves a playable video.
    """

    def __init__(self, target: str | os.PathLike, fps: float = 30.0):
        self.target = Path(target)
        suffix = self.target.suffix.lower()
        if suffix not in _FOURCC:
            raise SourceError(f"{self.target}: cannot write video with suffix {suffix!r}; "
                              f"use one of {', '.join(_FOURCC)}")
        self.fps = fps
        self.frames = 0
        self._writer = None
        self._tmp = temp_beside(self.target, suffix)  # 0644, like the annotated images

    def write(self, frame_bgr: np.ndarray) -> None:
        cv2 = opencv()
        h, w = frame_bgr.shape[:2]
        if self._writer is None:
            fourcc = cv2.VideoWriter_fourcc(*_FOURCC[self.target.suffix.lower()])
            self._writer = cv2.VideoWriter(str(self._tmp), fourcc, self.fps, (w, h))
            if not self._writer.isOpened():
                raise SourceError(f"{self.target}: OpenCV cannot open a video writer for it")
            self._size = (w, h)
        if (w, h) != self._size:  # a reconnected camera may change resolution
            frame_bgr = cv2.resize(frame_bgr, self._size)
        self._writer.write(frame_bgr)
        self.frames += 1

    def close(self) -> Path | None:
        """Finish the file; returns the target, or None when no frame was written."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self.frames and self._tmp.exists():
            commit(self._tmp, self.target)
            return self.target
        self._tmp.unlink(missing_ok=True)
        return None

    def __enter__(self) -> "VideoSaver":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def save_snapshot(frame_bgr: np.ndarray, target: str | os.PathLike) -> Path:
    cv2 = opencv()
    with atomic_path(target) as tmp:
        if not cv2.imwrite(str(tmp), frame_bgr):
            raise SourceError(f"{target}: OpenCV could not write the snapshot")
    return Path(target)


class Window:
    """An OpenCV window; ``None`` from ``Window.try_open`` when no display can be used."""

    def __init__(self, title: str):
        self.cv2 = opencv()
        self.title = title
        self.cv2.namedWindow(title, self.cv2.WINDOW_NORMAL)

    @classmethod
    def try_open(cls, title: str) -> "Window | None":
        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY")
                                                     or os.environ.get("WAYLAND_DISPLAY")):
            return None
        try:
            return cls(title)
        except Exception:  # cv2.error: a headless OpenCV build has no GUI
            return None

    def show(self, frame_bgr: np.ndarray, wait_ms: int = 1) -> int:
        """Show the frame; returns the key pressed (-1 for none)."""
        self.cv2.imshow(self.title, frame_bgr)
        return self.wait_key(wait_ms)

    def wait_key(self, wait_ms: int) -> int:
        key = self.cv2.waitKey(wait_ms)
        return -1 if key < 0 else key & 0xFF

    def close(self) -> None:
        try:
            self.cv2.destroyWindow(self.title)
            self.cv2.waitKey(1)
        except Exception:
            pass
