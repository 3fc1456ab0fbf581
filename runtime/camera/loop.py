"""The classify loop: frames from a source, classified one by one, as FrameResults (what was
seen, the prediction, the timings). ``runtime.camera.live`` shows, saves and serves them."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from runtime.camera.sources import FrameSource
from runtime.errors import SourceError
from runtime.image.draw import STATS_RGB, TEXT_RGB, UNCERTAIN_RGB, label_text
from runtime.model.classifier import UNCERTAIN

if TYPE_CHECKING:
    from runtime.model.classifier import Classifier, Prediction


@dataclass(frozen=True)
class LoopOptions:
    """How ``classify_stream`` reads and classifies, each default the CLI's."""

    full_frame: bool = False  # classify the whole frame, stretched, not its centre square
    smooth: int = 1  # average the probabilities of this many recent frames
    min_confidence: float = 0.0  # below it the label is UNCERTAIN
    reconnect: int = 3  # reopen a live source that stops delivering this many times
    backoff_s: float = 0.5  # the first wait before reopening; doubled each time
    max_frames: int | None = None  # stop after this many frames
    duration_s: float | None = None  # stop after this many seconds
    pace_fps: float | None = None  # read no faster than this (a video file played as a camera)


@dataclass(frozen=True)
class FrameResult:
    index: int  # 0-based count of classified frames
    frame_bgr: np.ndarray  # the frame as read, (H, W, 3) uint8 BGR
    prediction: "Prediction"  # smoothed over recent frames when smoothing is on
    label: str  # the top label, or UNCERTAIN below the confidence threshold
    box: tuple[int, int, int, int] | None  # classified region (x0, y0, x1, y1); None = full frame
    classify_ms: float  # this frame's preprocessing + onnxruntime + top-k (Classifier.predict)
    fps: float  # frames per second through the loop, smoothed
    read_ms: float = 0.0  # waiting for and decoding this frame (source.read)

    @property
    def ort_ms(self) -> float:
        """The onnxruntime part of ``classify_ms`` (``Prediction.ort_ms``)."""
        return self.prediction.ort_ms

    @property
    def preprocess_ms(self) -> float:
        """The rest of ``classify_ms``: crop, colour order, resize, then softmax and top-k."""
        return max(0.0, self.classify_ms - self.prediction.ort_ms)

    def to_dict(self) -> dict:
        return {"frame": self.index, "label": self.label,
                "confidence": round(self.prediction.confidence, 6),
                "top_k": self.prediction.to_dict()["top_k"],
                "classify_ms": round(self.classify_ms, 3), "ort_ms": round(self.ort_ms, 3),
                "fps": round(self.fps, 2)}

    def overlay_lines(self) -> list[tuple[str, tuple[int, int, int]]]:
        """The text drawn on this frame, top to bottom, each line with its RGB colour."""
        uncertain = self.label == UNCERTAIN
        return [(label_text(self.prediction.label, self.prediction.confidence, uncertain),
                 UNCERTAIN_RGB if uncertain else TEXT_RGB),
                (f"{self.classify_ms:.1f} ms  {self.fps:.1f} fps", STATS_RGB)]


def center_square(width: int, height: int) -> tuple[int, int, int, int]:
    side = min(width, height)
    x0, y0 = (width - side) // 2, (height - side) // 2
    return x0, y0, x0 + side, y0 + side


def classify_stream(source: FrameSource, classifier: "Classifier", options: LoopOptions | None = None, *,
                    stop: threading.Event | None = None, swap: Callable[[], "Classifier | None"] | None = None,
                    **changes) -> Iterator[FrameResult]:
    """Classify frames from ``source`` until it ends, a bound is reached, or ``stop`` is set.

    ``options`` (or its fields as keywords: ``classify_stream(src, clf, max_frames=5)``) say
    how: the centre square is classified, or the whole frame stretched with ``full_frame``;
    ``smooth`` > 1 averages the probabilities of that many recent frames; a live source that
    stops delivering is reopened up to ``reconnect`` times with doubling backoff, then a
    SourceError is raised; ``pace_fps`` reads no faster than that rate. ``swap``, called
    before each frame is classified, may hand over another classifier (``--reload``): that
    frame and the next are classified by it, and smoothing starts afresh.
    """
    o = replace(options or LoopOptions(), **changes)
    stop = stop or threading.Event()
    history: deque[np.ndarray] = deque(maxlen=max(1, o.smooth))
    clock = _FrameClock()
    failures = 0
    while not stop.is_set() and not clock.bound_reached(o, stop):
        t_read = time.perf_counter()
        frame_bgr = source.read()
        read_ms = (time.perf_counter() - t_read) * 1000.0
        if frame_bgr is None:
            if not source.live or not _reopen(source, failures, o, stop):
                return  # the end of a video file, or stopped while waiting to reopen
            failures += 1
            continue
        failures = 0
        if swap is not None and (fresh := swap()) is not None:
            classifier = fresh
            history.clear()  # another model's probabilities are not averaged with the new one's
        t0 = time.perf_counter()
        prediction, box = _classify(classifier, frame_bgr, o.full_frame)
        classify_ms = (time.perf_counter() - t0) * 1000.0
        if o.smooth > 1:
            history.append(prediction.probabilities)
            prediction = classifier.top_from(np.mean(history, axis=0), prediction.ort_ms)
        yield FrameResult(clock.index, frame_bgr, prediction, prediction.shown_label(o.min_confidence), box,
                          classify_ms, clock.tick(), read_ms)


class _FrameClock:
    """Frames counted and timed: the loop's bounds (count, duration, pace) and its smoothed FPS."""

    def __init__(self) -> None:
        self.started = self.last = time.monotonic()
        self.index = 0
        self.fps = 0.0

    def bound_reached(self, o: LoopOptions, stop: threading.Event) -> bool:
        if o.max_frames is not None and self.index >= o.max_frames:
            return True
        if o.duration_s is not None and time.monotonic() - self.started >= o.duration_s:
            return True
        due = self.started + self.index / o.pace_fps if o.pace_fps and self.index else None
        return due is not None and stop.wait(max(0.0, due - time.monotonic()))

    def tick(self) -> float:
        """One more frame classified: the FPS so far (an exponential average of the intervals)."""
        now = time.monotonic()
        if self.index:
            instant = 1.0 / max(now - self.last, 1e-6)
            self.fps = instant if self.fps == 0.0 else 0.9 * self.fps + 0.1 * instant
        self.last = now
        self.index += 1
        return self.fps


def _reopen(source: FrameSource, failures: int, o: LoopOptions, stop: threading.Event) -> bool:
    """After a failed read of a live source: wait (doubling) and reopen it; False if stopped
    while waiting; a SourceError once ``o.reconnect`` attempts are used up."""
    if failures >= o.reconnect:
        raise SourceError(f"{source.name}: stopped delivering frames; gave up after "
                          f"{o.reconnect} reconnect attempt(s)")
    if stop.wait(o.backoff_s * 2 ** failures):
        return False
    try:
        source.reopen()  # type: ignore[attr-defined]
    except SourceError:
        pass  # counted; the next read fails again and we retry or give up
    return True


def _classify(classifier: "Classifier", frame_bgr: np.ndarray, full_frame: bool):
    """The frame's centre square (or all of it, stretched) -> (prediction, classified box)."""
    if full_frame:
        return classifier.predict(frame_bgr=frame_bgr, resize="stretch"), None
    box = center_square(frame_bgr.shape[1], frame_bgr.shape[0])
    x0, y0, x1, y1 = box
    return classifier.predict(frame_bgr=frame_bgr[y0:y1, x0:x1]), box
