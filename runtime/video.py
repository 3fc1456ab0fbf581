"""Live video: frame sources, the classify loop, the overlay and the saved video.

All OpenCV code of the package is in this module, and ``cv2`` is imported only inside its
functions, so image-only installs never need it. Frames are ``frame_bgr``: (H, W, 3) uint8 BGR.

Pieces, each usable alone (an MJPEG live view plugs in the same way):
  FrameSource        read() -> frame_bgr | None, release(); ``live`` sources may reopen()
  OpenCVSource       camera index, device path, video file, RTSP/HTTP URL, GStreamer pipeline
  csi_pipeline       the GStreamer pipeline for a Jetson CSI camera (``csi://N``)
  PicameraSource     a Raspberry Pi camera through picamera2 (``picam:N``, runtime.picamera)
  LatestFrameReader  a thread that keeps only the newest frame of a live source
  classify_stream    generator of FrameResult (frame, prediction, timings)
  annotate_frame     pure: frame + result -> annotated copy
  VideoSaver         annotated frames -> a video file, renamed into place when closed
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Protocol

import numpy as np

from .annotate import BAND_RGB, BOX_RGB, STATS_RGB, TEXT_RGB, UNCERTAIN_RGB, label_text
from .atomic import commit, temp_beside
from .classifier import UNCERTAIN
from .errors import OptionError, SourceError

if TYPE_CHECKING:
    from .classifier import Classifier, Prediction

_URL = re.compile(r"^(rtsp|rtsps|rtmp|http|https|udp|tcp|srt)://", re.IGNORECASE)
_PICAM = re.compile(r"^picam(?::(\d+))?$")  # picam, picam:1
_CSI = re.compile(r"^csi://(\d+)$")  # csi://0
CSI_SIZE, CSI_FPS = (1280, 720), 30  # a mode every Jetson CSI sensor has (IMX219, IMX477)


def _cv2():
    try:
        import cv2
    except ImportError as exc:
        if "numpy" in str(exc).lower():  # a system OpenCV built for NumPy 1.x under a pip NumPy 2
            raise SourceError(f"OpenCV cannot load with NumPy {np.__version__} ({exc}): the "
                              "system's OpenCV is built for its NumPy 1.x; in the venv, pip "
                              "install 'numpy<2'") from None
        raise SourceError("video needs OpenCV: pip install 'cifar-edge[camera]' "
                          "(or opencv-python-headless)") from None
    return cv2


@contextlib.contextmanager
def _opencv_log_silenced(cv2) -> Iterator[None]:
    """Keep OpenCV's own log lines ("[ WARN:0@0.01] global cap_v4l.cpp ... can't open camera
    by index") off stderr while a capture opens: a failure is reported once, as a SourceError."""
    log = getattr(getattr(cv2, "utils", None), "logging", None)  # absent in some older builds
    if log is None:
        yield
        return
    previous = log.getLogLevel()
    log.setLogLevel(log.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        log.setLogLevel(previous)


class FrameSource(Protocol):
    name: str
    live: bool  # True: a camera or stream (frames can be dropped, may reconnect)

    def read(self) -> np.ndarray | None:
        """The next (H, W, 3) uint8 BGR frame, or None when none is coming."""

    def release(self) -> None: ...


def is_live(spec: str) -> bool:
    return (spec.isdigit() or spec.startswith("/dev/") or bool(_URL.match(spec)) or "!" in spec
            or bool(_PICAM.match(spec) or _CSI.match(spec)))


def is_camera_spec(spec: str) -> bool:
    """``picam``, ``picam:N`` or ``csi://N``: the sources that take a size and a frame rate."""
    return bool(_PICAM.match(spec) or _CSI.match(spec))


def csi_pipeline(sensor_id: int = 0, size: tuple[int, int] = CSI_SIZE, fps: int = CSI_FPS) -> str:
    """The GStreamer pipeline for a Jetson CSI camera, as NVIDIA's and JetsonHacks' examples
    build it: Argus delivers NV12 in GPU memory (NVMM), nvvidconv copies it out as BGRx,
    videoconvert drops the X, and appsink keeps only the newest frame (drop, max-buffers=1)."""
    width, height = size
    return (f"nvarguscamerasrc sensor-id={sensor_id} ! "
            f"video/x-raw(memory:NVMM),width={width},height={height},framerate={fps}/1 ! "
            "nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
            "appsink drop=1 max-buffers=1")


def _has_gstreamer(cv2) -> bool:
    return re.search(r"GStreamer:\s*YES", cv2.getBuildInformation()) is not None


NO_GSTREAMER = ("this OpenCV ({version}) was built without GStreamer (pip's opencv-python "
                "wheels never have it); on a Jetson use JetPack's OpenCV: sudo apt install "
                "python3-opencv, a venv made with python3 -m venv --system-site-packages, and "
                "no opencv-python* from pip in it (pip uninstall opencv-python "
                "opencv-python-headless)")


class OpenCVSource:
    """A ``cv2.VideoCapture`` on ``spec``: "0" (camera index), "/dev/video0", a video file,
    an rtsp:// or http:// URL, or a GStreamer pipeline (contains "!"). ``name`` is what
    messages and the window call it (``csi://0`` for the pipeline built for it)."""

    def __init__(self, spec: str, name: str | None = None):
        self.spec = spec
        self.name = name or spec
        self.live = is_live(spec)
        self.cap = None
        self.open()

    def open(self) -> None:
        cv2 = _cv2()
        spec = self.spec
        if "!" in spec and not _has_gstreamer(cv2):
            raise SourceError(f"{self.name}: needs a GStreamer pipeline, but "
                              + NO_GSTREAMER.format(version=cv2.__version__))
        if not self.live and not Path(spec).is_file():
            raise SourceError(f"cannot open video source {spec!r}: no such file")
        with _opencv_log_silenced(cv2):
            if "!" in spec:
                cap = cv2.VideoCapture(spec, cv2.CAP_GSTREAMER)
            else:
                cap = cv2.VideoCapture(int(spec) if spec.isdigit() else spec)
        if not cap.isOpened():
            cap.release()
            camera = spec.isdigit() or spec.startswith("/dev/") or self.name != spec
            raise SourceError(f"cannot open {'camera' if camera else 'video source'} "
                              f"{self.name!r} (is it connected, readable and not used by "
                              "another program?)")
        self.cap = cap
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 1.0 <= fps <= 240.0 else None

    def read(self) -> np.ndarray | None:
        if self.cap is None:
            return None
        ok, frame = self.cap.read()
        return frame if ok and frame is not None and frame.size else None

    def reopen(self) -> None:
        self.release()
        self.open()

    def release(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


class LatestFrameReader:
    """Reads ``source`` on a background thread and keeps only the newest frame, so a slow
    classifier never makes latency pile up. ``read`` waits up to ``timeout_s`` for a frame
    newer than the last one returned, else returns None (the source stalled or ended)."""

    live = True

    def __init__(self, source: FrameSource, timeout_s: float = 2.0):
        self.source = source
        self.name = source.name
        self.fps = getattr(source, "fps", None)
        self.timeout_s = timeout_s
        self._cond = threading.Condition()
        self._start()

    def _start(self) -> None:
        self._frame: np.ndarray | None = None
        self._seq = self._taken = 0
        self._ended = self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"frames:{self.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping:
            frame = self.source.read()
            with self._cond:
                if frame is None:
                    self._ended = True
                else:
                    self._frame, self._seq = frame, self._seq + 1
                self._cond.notify_all()
            if frame is None:
                return

    def read(self) -> np.ndarray | None:
        with self._cond:
            self._cond.wait_for(lambda: self._seq > self._taken or self._ended, self.timeout_s)
            if self._seq > self._taken:
                self._taken = self._seq
                return self._frame
            return None

    def _stop(self) -> None:
        self._stopping = True
        self._thread.join(timeout=2.0)  # a read() blocked in the driver may outlive this

    def reopen(self) -> None:
        self._stop()
        self.source.reopen()
        self._start()

    def release(self) -> None:
        self._stop()
        self.source.release()


def open_source(spec: str, stall_timeout_s: float = 2.0, *, size: tuple[int, int] | None = None,
                fps: int | None = None) -> FrameSource:
    """Open ``spec``; live sources get a LatestFrameReader, files are read frame by frame.

    ``picam`` / ``picam:N`` is a Raspberry Pi camera through picamera2, ``csi://N`` a Jetson
    CSI camera through GStreamer; ``size`` (width, height) and ``fps`` apply to those two.
    """
    if (size or fps) and not is_camera_spec(spec):
        raise OptionError(f"a camera size and frame rate apply to picam and csi:// cameras, "
                          f"not to {spec!r}")
    source: FrameSource
    if (m := _PICAM.match(spec)):
        from .picamera import DEFAULT_SIZE, PicameraSource

        source = PicameraSource(int(m[1] or 0), size=size or DEFAULT_SIZE, fps=fps)
    elif (m := _CSI.match(spec)):
        source = OpenCVSource(csi_pipeline(int(m[1]), size or CSI_SIZE, fps or CSI_FPS), name=spec)
    elif spec.startswith(("picam:", "csi:")):
        raise SourceError(f"camera {spec!r}: write picam, picam:N or csi://N (N = 0, 1, ...)")
    else:
        source = OpenCVSource(spec)
    return LatestFrameReader(source, stall_timeout_s) if source.live else source


# -- the loop -------------------------------------------------------------------------------

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


# -- drawing and saving ---------------------------------------------------------------------

def annotate_frame(frame_bgr: np.ndarray, result: FrameResult) -> np.ndarray:
    """A copy of ``frame_bgr`` with the classified box, label, confidence, time and FPS."""
    cv2 = _cv2()
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
        cv2 = _cv2()
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
    from .atomic import atomic_path

    cv2 = _cv2()
    with atomic_path(target) as tmp:
        if not cv2.imwrite(str(tmp), frame_bgr):
            raise SourceError(f"{target}: OpenCV could not write the snapshot")
    return Path(target)


class Window:
    """An OpenCV window; ``None`` from ``Window.try_open`` when no display can be used."""

    def __init__(self, title: str):
        self.cv2 = _cv2()
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
