"""The camera loop's newest frame, shared by every viewer: encoded once, sent to all.

As in picamera2's ``mjpeg_server`` example, viewers wait on a Condition for the next JPEG.
Unlike it, the camera loop never encodes: ``publish`` only keeps a reference to the newest
result, and an encoder thread, awake only while someone watches, draws the overlay and
encodes it with Pillow at most ``max_fps`` times a second. A slow or vanished viewer holds up
only its own connection, never the loop or the other viewers.

The overlay is drawn with Pillow here, not with OpenCV, so a Raspberry Pi camera (picamera2)
streams on the base install, and the drawing happens off the camera loop's thread.
"""

from __future__ import annotations

import contextlib
import io
import math
import threading
import time
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
from PIL import Image, ImageDraw

from runtime.image.draw import BAND_RGB, BOX_RGB, font

if TYPE_CHECKING:
    from runtime.camera.loop import FrameResult


class TooManyViewers(Exception):
    pass


def render_jpeg(result: "FrameResult", max_side: int, quality: int) -> bytes:
    """``result``'s frame, reduced by a whole factor until its longest side is at most
    ``max_side`` px, with the classified box, label, confidence, time and FPS drawn on it,
    as JPEG bytes."""
    frame_bgr = np.ascontiguousarray(result.frame_bgr)  # (H, W, 3) uint8 BGR
    height, width = frame_bgr.shape[:2]
    image = Image.frombuffer("RGB", (width, height), frame_bgr, "raw", "BGR", 0, 1)  # converts BGR->RGB
    factor = math.ceil(max(width, height) / max_side)
    if factor > 1:
        image = image.reduce(factor)  # box average: a few ms, where resize() takes several times that
    scale = image.width / width
    draw = ImageDraw.Draw(image)
    size = max(12, min(image.size) // 18)  # px: text height relative to the streamed frame
    if result.box is not None:
        x0, y0, x1, y1 = (round(v * scale) for v in result.box)
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=BOX_RGB, width=max(1, size // 8))
    y = 0
    for text, fill in result.overlay_lines():
        band = round(size * 1.4)
        draw.rectangle((0, y, round(font(size).getlength(text)) + size // 2, y + band), fill=BAND_RGB)
        draw.text((size // 4, y + size // 6), text, fill=fill, font=font(size))
        y += band
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


class FrameHub:
    """Holds the newest FrameResult and its JPEG. ``publish`` from the camera loop;
    ``viewer()`` and ``next_jpeg`` from each stream connection; ``latest()`` for the API."""

    def __init__(self, *, max_viewers: int, max_fps: float, max_side: int, quality: int,
                 log: Callable[[str], None] = lambda _m: None):
        self.max_viewers, self.max_side, self.quality = max_viewers, max_side, quality
        self.min_interval_s = 1.0 / max_fps if max_fps > 0 else 0.0
        self.log = log
        lock = threading.Lock()
        self._new_frame = threading.Condition(lock)  # the encoder waits on this
        self._new_jpeg = threading.Condition(lock)  # viewers wait on this
        self._result: FrameResult | None = None
        self._published_at = 0.0  # time.time() of the newest result
        self._frame_seq = self._jpeg_seq = 0
        self._jpeg = b""
        self._viewers = 0
        self._closed = threading.Event()
        self._status: dict = {}  # what /api/latest adds: the model running, why a reload was refused
        self._encoder = threading.Thread(target=self._encode_loop, name="mjpeg-encoder", daemon=True)

    # -- the camera loop's side: never waits on viewers --------------------------------------

    def start(self) -> None:
        self._encoder.start()

    def publish(self, result: "FrameResult") -> None:
        with self._new_frame:
            self._result, self._published_at = result, time.time()
            self._frame_seq += 1
            if self._viewers:
                self._new_frame.notify()

    def set_status(self, **status) -> None:
        """Keys /api/latest adds to every answer (``model``, ``reload_error``)."""
        with self._new_frame:
            self._status.update(status)

    def close(self) -> None:
        """Wake every viewer and the encoder, which end; joins the encoder."""
        self._closed.set()
        with self._new_frame:
            self._new_frame.notify_all()
            self._new_jpeg.notify_all()
        if self._encoder.is_alive():
            self._encoder.join(timeout=5.0)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    # -- the API's side ---------------------------------------------------------------------

    def latest(self) -> dict | None:
        """The newest prediction as JSON-ready data, or None before the first frame."""
        with self._new_frame:
            result, at, status = self._result, self._published_at, dict(self._status)
        if result is None:
            return None
        return {**result.to_dict(), "top_label": result.prediction.label, "time": round(at, 3), **status}

    # -- the viewers' side ------------------------------------------------------------------

    @contextlib.contextmanager
    def viewer(self) -> Iterator[int]:
        """Count a viewer in for the ``with`` block; yields the sequence number of the JPEG
        it has seen (none yet). Raises TooManyViewers at the cap."""
        with self._new_frame:
            if self._viewers >= self.max_viewers:
                raise TooManyViewers(f"{self.max_viewers} viewers are watching already")
            self._viewers += 1
            seen = self._jpeg_seq
            self._new_frame.notify()  # the encoder may have been idle: the newest frame is due
        try:
            yield seen
        finally:
            with self._new_frame:
                self._viewers -= 1

    def next_jpeg(self, seen: int, timeout_s: float) -> tuple[int, bytes] | None:
        """The first JPEG newer than ``seen`` as (its number, bytes); None after ``timeout_s``
        without one or when the hub closed."""
        with self._new_jpeg:
            self._new_jpeg.wait_for(lambda: self._jpeg_seq > seen or self._closed.is_set(), timeout_s)
            if self._jpeg_seq > seen and not self._closed.is_set():
                return self._jpeg_seq, self._jpeg
            return None

    # -- the encoder thread -----------------------------------------------------------------

    def _frame_due(self) -> bool:
        return self._closed.is_set() or (self._viewers > 0 and self._frame_seq > self._encoded_seq)

    def _encode_loop(self) -> None:
        self._encoded_seq = 0  # the frame the newest JPEG shows
        while True:
            with self._new_frame:
                self._new_frame.wait_for(self._frame_due)
                if self._closed.is_set():
                    return
                result, self._encoded_seq = self._result, self._frame_seq
            started = time.monotonic()
            try:
                jpeg = render_jpeg(result, self.max_side, self.quality)
            except Exception as exc:  # one odd frame must not end the stream for everyone
                self.log(f"stream: frame {result.index} not encoded: {type(exc).__name__}: {exc}")
                continue
            with self._new_jpeg:
                self._jpeg, self._jpeg_seq = jpeg, self._jpeg_seq + 1
                self._new_jpeg.notify_all()
            self._closed.wait(max(0.0, started + self.min_interval_s - time.monotonic()))
