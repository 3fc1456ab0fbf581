"""The classify loop: frames from a source, classified one by one, as FrameResults (what was
seen, the prediction, the timings). ``runtime.camera.live`` shows, saves and serves them."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import numpy as np

from runtime.camera.sources import FrameSource
from runtime.errors import SourceError
from runtime.image.draw import STATS_RGB, TEXT_RGB, UNCERTAIN_RGB, label_text
from runtime.model.classifier import UNCERTAIN

if TYPE_CHECKING:
    from runtime.model.classifier import Classifier, Prediction


@dataclass(frozen=True)
class FrameResult:
    index: int  # 0-based count of classified frames
    frame_bgr: np.ndarray  # the frame as read, (H, W, 3) uint8 BGR
    prediction: "Prediction"  # smoothed over recent frames when smoothing is on
    label: str  # the top label, or UNCERTAIN below the confidence threshold
    box: tuple[int, int, int, int] | None  # classified region (x0, y0, x1, y1); None = full frame
    infer_ms: float  # preprocessing + onnxruntime for this frame
    fps: float  # frames per second through the loop, smoothed
    read_ms: float = 0.0  # waiting for and decoding this frame (source.read)

    def to_dict(self) -> dict:
        return {"frame": self.index, "label": self.label,
                "confidence": round(self.prediction.confidence, 6),
                "top_k": self.prediction.to_dict()["top_k"],
                "infer_ms": round(self.infer_ms, 3), "fps": round(self.fps, 2)}

    def overlay_lines(self) -> list[tuple[str, tuple[int, int, int]]]:
        """The text drawn on this frame, top to bottom, each line with its RGB colour."""
        uncertain = self.label == UNCERTAIN
        return [(label_text(self.prediction.label, self.prediction.confidence, uncertain),
                 UNCERTAIN_RGB if uncertain else TEXT_RGB),
                (f"{self.infer_ms:.1f} ms  {self.fps:.1f} fps", STATS_RGB)]


def center_square(width: int, height: int) -> tuple[int, int, int, int]:
    side = min(width, height)
    x0, y0 = (width - side) // 2, (height - side) // 2
    return x0, y0, x0 + side, y0 + side


def classify_stream(source: FrameSource, classifier: "Classifier", *, full_frame: bool = False,
                    smooth: int = 1, min_confidence: float = 0.0, reconnect: int = 3,
                    backoff_s: float = 0.5, max_frames: int | None = None,
                    duration_s: float | None = None, pace_fps: float | None = None,
                    stop: threading.Event | None = None) -> Iterator[FrameResult]:
    """Classify frames from ``source`` until it ends, a bound is reached, or ``stop`` is set.

    The centre square is classified (or the whole frame, stretched, with ``full_frame``).
    ``smooth`` > 1 averages the probabilities of that many recent frames. A live source that
    stops delivering is reopened up to ``reconnect`` times with doubling backoff, then a
    SourceError is raised. ``pace_fps`` reads no faster than that rate (a video file played
    as a camera would deliver it).
    """
    stop = stop or threading.Event()
    history: deque[np.ndarray] = deque(maxlen=max(1, smooth))
    started = last = time.monotonic()
    fps = 0.0
    index = failures = 0
    while not stop.is_set():
        if max_frames is not None and index >= max_frames:
            return
        if duration_s is not None and time.monotonic() - started >= duration_s:
            return
        if pace_fps and index and stop.wait(max(0.0, started + index / pace_fps - time.monotonic())):
            return
        t_read = time.perf_counter()
        frame_bgr = source.read()
        read_ms = (time.perf_counter() - t_read) * 1000.0
        if frame_bgr is None:
            if not source.live:
                return  # end of a video file
            if failures >= reconnect:
                raise SourceError(f"{source.name}: stopped delivering frames; gave up after "
                                  f"{reconnect} reconnect attempt(s)")
            failures += 1
            if stop.wait(backoff_s * 2 ** (failures - 1)):
                return
            try:
                source.reopen()  # type: ignore[attr-defined]
            except SourceError:
                pass  # counted; the next read fails again and we retry or give up
            continue
        failures = 0
        t0 = time.perf_counter()
        if full_frame:
            box = None
            prediction = classifier.predict(frame_bgr=frame_bgr, resize="stretch")
        else:
            box = center_square(frame_bgr.shape[1], frame_bgr.shape[0])
            x0, y0, x1, y1 = box
            prediction = classifier.predict(frame_bgr=frame_bgr[y0:y1, x0:x1])
        infer_ms = (time.perf_counter() - t0) * 1000.0
        if smooth > 1:
            history.append(prediction.probabilities)
            prediction = classifier.top_from(np.mean(history, axis=0), prediction.infer_ms)
        now = time.monotonic()
        if index:
            instant = 1.0 / max(now - last, 1e-6)
            fps = instant if fps == 0.0 else 0.9 * fps + 0.1 * instant
        last = now
        label = prediction.shown_label(min_confidence)
        yield FrameResult(index, frame_bgr, prediction, label, box, infer_ms, fps, read_ms)
        index += 1
