"""Frame sources: what ``--camera SRC`` names, opened as something with ``read() -> frame_bgr``.

OpenCV is imported only inside functions (``opencv()``), so image-only installs never need it.
Frames are ``frame_bgr``: (H, W, 3) uint8 BGR.

  FrameSource        read() -> frame_bgr | None, release(); ``live`` sources may reopen()
  OpenCVSource       camera index, device path, video file, RTSP/HTTP URL, GStreamer pipeline
  csi_pipeline       the GStreamer pipeline for a Jetson CSI camera (``csi://N``)
  PicameraSource     a Raspberry Pi camera through picamera2 (``picam:N``, runtime.camera.picamera)
  LatestFrameReader  a thread that keeps only the newest frame of a live source
  open_source        a spec string -> the right source
"""

from __future__ import annotations

import contextlib
import re
import threading
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np

from runtime.errors import OptionError, SourceError

_URL = re.compile(r"^(rtsp|rtsps|rtmp|http|https|udp|tcp|srt)://", re.IGNORECASE)
_PICAM = re.compile(r"^picam(?::(\d+))?$")  # picam, picam:1
_CSI = re.compile(r"^csi://(\d+)$")  # csi://0
CSI_SIZE, CSI_FPS = (1280, 720), 30  # a mode every Jetson CSI sensor has (IMX219, IMX477)


def opencv():
    """``cv2``, imported on first use; a SourceError that says how to install it."""
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
        cv2 = opencv()
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
        from runtime.camera.picamera import DEFAULT_SIZE, PicameraSource

        source = PicameraSource(int(m[1] or 0), size=size or DEFAULT_SIZE, fps=fps)
    elif (m := _CSI.match(spec)):
        source = OpenCVSource(csi_pipeline(int(m[1]), size or CSI_SIZE, fps or CSI_FPS), name=spec)
    elif spec.startswith(("picam:", "csi:")):
        raise SourceError(f"camera {spec!r}: write picam, picam:N or csi://N (N = 0, 1, ...)")
    else:
        source = OpenCVSource(spec)
    return LatestFrameReader(source, stall_timeout_s) if source.live else source

