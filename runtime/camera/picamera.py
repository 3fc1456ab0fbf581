"""Raspberry Pi cameras through picamera2 (libcamera): ``cifar-run --camera picam`` or ``picam:N``.

picamera2 comes with Raspberry Pi OS (``sudo apt install python3-picamera2``), not from pip, so
a venv sees it only when made with ``python3 -m venv --system-site-packages``. It is imported
inside ``PicameraSource.open`` alone: ``import runtime`` never loads it.

The camera is created once, configured with one 3-channel stream ("main"), started, read with
``capture_array`` frame by frame, and always stopped and closed: a camera left acquired is
"busy" for every other program until this process dies.
"""

from __future__ import annotations

import contextlib
import logging
import os
from concurrent import futures

import numpy as np

from runtime.errors import SourceError

DEFAULT_SIZE = (640, 480)  # (width, height): the centre square is resized to 32x32 anyway
MAIN_FORMAT = "RGB888"  # B,G,R in memory (see below): frame_bgr as delivered, no conversion
# capture_array(wait=seconds) raises TimeoutError on a hung camera in picamera2 versions whose
# dispatch_functions takes a number; older ones read any true ``wait`` as "wait forever".
CAPTURE_TIMEOUT_S = 5.0

# libcamera names a format by its channels from the most significant byte of a little-endian
# word, so the bytes in memory run the other way. picamera2 says so itself: request.py
# (Helpers.make_image) reads RGB888 as PIL "BGR", BGR888 as "RGB", XBGR8888 as "RGBX" and
# XRGB8888 as "BGRX"; its libav encoders' FORMAT_TABLE maps them to bgr24, rgb24, rgba, bgra.
# Format -> the indices of B, G, R in capture_array's last axis (the X byte is dropped).
BGR_INDEX = {
    "RGB888": (0, 1, 2),  # B,G,R
    "BGR888": (2, 1, 0),  # R,G,B
    "XRGB8888": (0, 1, 2),  # B,G,R,X
    "XBGR8888": (2, 1, 0),  # R,G,B,X
}

INSTALL_HINT = ("picamera2 comes from the OS, not pip: sudo apt install python3-picamera2, and "
                "make the venv with python3 -m venv --system-site-packages so that it sees it")


def to_frame_bgr(array: np.ndarray, fmt: str) -> np.ndarray:
    """The one conversion from a ``capture_array`` array in libcamera format ``fmt``,
    (H, W, 3 or 4) uint8, to frame_bgr: (H, W, 3) uint8 BGR."""
    index = BGR_INDEX.get(fmt)
    channels = 4 if fmt.startswith("X") else 3
    if index is None:
        raise SourceError(f"picamera2 delivers {fmt!r}; cifar-edge reads {', '.join(BGR_INDEX)}")
    if array.ndim != 3 or array.shape[2] != channels:
        raise SourceError(f"picamera2 gave a {array.shape} array for {fmt!r} "
                          f"(expected (H, W, {channels}))")
    if index == (0, 1, 2) and channels == 3:
        return array  # RGB888 is already B,G,R; capture_array returns a fresh copy each frame
    return np.ascontiguousarray(array[..., list(index)])


def _import_picamera2():
    # libcamera logs INFO and WARN lines from C++ to stderr ("libcamera v0.3", "Registered
    # camera ..."), and picamera2 logs the errors it raises; each failure here is reported once,
    # as a SourceError. LIBCAMERA_LOG_LEVELS=*:INFO in the environment brings them back.
    os.environ.setdefault("LIBCAMERA_LOG_LEVELS", "*:ERROR")
    log = logging.getLogger("picamera2")
    if not log.handlers:  # Picamera2.set_logging was not called: no "last resort" stderr lines
        log.addHandler(logging.NullHandler())
    try:
        from picamera2 import Picamera2
    except ModuleNotFoundError as exc:  # picamera2 itself, or libcamera / simplejpeg under it
        raise SourceError(f"picam: {exc.name or 'picamera2'} is not installed here; "
                          f"{INSTALL_HINT}") from None
    except (ImportError, ValueError) as exc:
        # The system picamera2 and its simplejpeg are built against Debian's NumPy 1.x; a NumPy 2
        # pip-installed into the venv makes the import fail with "numpy.dtype size changed, may
        # indicate binary incompatibility" (raspberrypi/picamera2 issues #1088, #1211).
        if "numpy" not in str(exc).lower():
            raise
        raise SourceError(
            f"picam: picamera2 cannot load with NumPy {np.__version__} ({exc}); the system's "
            "picamera2 and simplejpeg are built against Debian's NumPy 1.x: in the venv, "
            "pip install 'numpy<2' (docs/devices.md, The NumPy clash)") from None
    return Picamera2


def _messages(exc: BaseException) -> list[str]:
    """The messages of ``exc`` and the exceptions it was raised from or while handling:
    picamera2 wraps libcamera's reason in RuntimeError("Camera __init__ sequence did not
    complete.")."""
    seen: list[str] = []
    while exc is not None and len(seen) < 8:
        seen.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return seen


def _is_busy(exc: BaseException) -> bool:
    # libcamera's binding raises "Failed to acquire camera: Device or resource busy"; older
    # picamera2 said "Failed to acquire camera" or "camera.acquire() returned unexpected
    # code: -16" (-EBUSY) (picamera2.py _open_camera; issues #399, #587, #1048).
    text = " ".join(_messages(exc)).lower()
    return "busy" in text or "failed to acquire" in text or "code: -16" in text


def _shutdown(camera) -> None:
    """stop() then close(), each tried even if the other fails; never raises (it runs in
    ``finally`` blocks, where an error would hide the first one)."""
    for step in (camera.stop, camera.close):
        with contextlib.suppress(Exception):
            step()


class PicameraSource:
    """A FrameSource on the ``camera_num``-th camera libcamera sees (``picam:N``)."""

    live = True

    def __init__(self, camera_num: int = 0, size: tuple[int, int] = DEFAULT_SIZE,
                 fps: float | None = None):
        self.camera_num = camera_num
        self.size = size  # (width, height) asked for; libcamera may adjust it
        self.fps = float(fps) if fps else None  # None: picamera2's video default (30 fps)
        self.name = f"picam:{camera_num}"
        self.format: str | None = None  # the main stream's format, as configured
        self._camera = None
        self.open()

    def open(self) -> None:
        Picamera2 = _import_picamera2()
        self._check_attached(Picamera2)
        try:
            camera = Picamera2(camera_num=self.camera_num)
        except Exception as exc:  # noqa: BLE001  RuntimeError; IndexError if the list changed
            if _is_busy(exc):
                raise SourceError(
                    f"{self.name}: the camera is busy: another process holds it (another "
                    "cifar-run, rpicam-hello/libcamera-hello or any rpicam-* app, a picamera2 "
                    "script); stop it and try again") from None
            raise SourceError(f"{self.name}: picamera2 cannot open the camera: "
                              f"{' <- '.join(_messages(exc))}") from None
        try:
            self.format = self._configure(camera)
            camera.start()
        except BaseException as exc:
            _shutdown(camera)
            if isinstance(exc, (RuntimeError, ValueError)):
                raise SourceError(f"{self.name}: cannot start a {self.size[0]}x{self.size[1]} "
                                  f"{MAIN_FORMAT} stream: {exc}") from None
            raise
        self._camera = camera

    def _check_attached(self, Picamera2) -> None:
        try:
            cameras = Picamera2.global_camera_info()
        except Exception as exc:  # noqa: BLE001  whatever libcamera raises: one line
            raise SourceError(f"{self.name}: libcamera cannot list cameras: {exc}") from None
        if not cameras:
            raise SourceError(f"{self.name}: no camera attached (libcamera sees none; check the "
                              "ribbon cable, then rpicam-hello --list-cameras)")
        if self.camera_num >= len(cameras):
            raise SourceError(f"{self.name}: no such camera; libcamera sees {len(cameras)}: "
                              + ", ".join(f"picam:{i}" for i in range(len(cameras))))

    def _configure(self, camera) -> str:
        """One 3-channel main stream of ``size``; returns the format libcamera settled on."""
        controls = {}
        if self.fps and "FrameDurationLimits" in camera.camera_controls:
            frame_us = round(1_000_000 / self.fps)  # a fixed frame duration, in microseconds
            controls["FrameDurationLimits"] = (frame_us, frame_us)
        config = camera.create_video_configuration(
            main={"size": tuple(self.size), "format": MAIN_FORMAT}, controls=controls)
        camera.configure(config)
        fmt = camera.stream_configuration("main")["format"]
        if fmt not in BGR_INDEX:
            raise RuntimeError(f"libcamera gave format {fmt!r}")
        return fmt

    def read(self) -> np.ndarray | None:
        camera = self._camera
        if camera is None:
            return None
        try:
            array = camera.capture_array("main", wait=CAPTURE_TIMEOUT_S)
        except (RuntimeError, OSError, futures.TimeoutError, futures.CancelledError):
            return None  # stopped, hung or cancelled: the loop reconnects or gives up
        return to_frame_bgr(array, self.format)

    def reopen(self) -> None:
        self.release()
        self.open()

    def release(self) -> None:
        camera, self._camera = self._camera, None
        if camera is not None:
            _shutdown(camera)
