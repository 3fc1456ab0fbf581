"""A stand-in for the ``picamera2`` package, as much of it as runtime.camera.picamera uses, behaving
as picamera2's own source does (raspberrypi/picamera2, picamera2/picamera2.py and request.py):

- ``Picamera2.global_camera_info()``: one dict per attached camera (Model, Id, Num);
- ``Picamera2(camera_num)`` looks the camera up in that list (an IndexError past its end) and
  acquires it; a camera held by another instance fails as picamera2 does, with
  RuntimeError("Camera __init__ sequence did not complete.") raised while handling
  RuntimeError("Failed to acquire camera: Device or resource busy");
- ``create_video_configuration`` / ``create_preview_configuration`` return plain dicts,
  ``configure`` takes one, ``stream_configuration("main")`` reports the format settled on;
- ``capture_array("main")`` returns a fresh (H, W, 3 or 4) uint8 array whose bytes are in the
  configured format's memory order: RGB888 B,G,R; BGR888 R,G,B; XRGB8888 B,G,R,X;
  XBGR8888 R,G,B,X (request.py Helpers.make_image: "RGB888" -> PIL "BGR", and so on);
- ``stop`` and ``close`` (close stops first and releases the camera).

``install(monkeypatch, ...)`` puts it in ``sys.modules["picamera2"]``; every call made on a
camera is appended to ``Picamera2.calls`` (and to the file named by FAKE_PICAMERA2_LOG, for a
test that watches another process). ``import_fails`` makes importing a system package fail as
it does on a device with a clashing NumPy.
"""

from __future__ import annotations

import os
import sys
import time
import types

import numpy as np

# The bytes in memory, per libcamera format, of a pixel whose colour is (r, g, b).
MEMORY_ORDER = {
    "RGB888": lambda r, g, b: (b, g, r),
    "BGR888": lambda r, g, b: (r, g, b),
    "XRGB8888": lambda r, g, b: (b, g, r, 255),
    "XBGR8888": lambda r, g, b: (r, g, b, 255),
}


ONE_CAMERA = ({"Model": "imx708", "Id": "/base/axi/i2c@80000/imx708@1a", "Num": 0},)
FRAME_S = 0.005  # capture_array waits this long for "the next frame", as a camera would


class Picamera2:
    cameras: list[dict] = list(ONE_CAMERA)
    held: set[int] = set()  # cameras acquired by some instance (or by "another process")
    scene_rgb: np.ndarray = np.zeros((8, 8, 3), np.uint8)  # what the camera sees, RGB
    force_format: str | None = None  # libcamera "adjusts" the main format to this one
    calls: list[tuple] = []
    fail_reads_after: int | None = None  # capture_array raises after this many frames

    @classmethod
    def reset(cls) -> None:
        cls.cameras = [dict(c) for c in ONE_CAMERA]
        cls.held, cls.calls = set(), []
        cls.scene_rgb = np.zeros((8, 8, 3), np.uint8)
        cls.force_format = cls.fail_reads_after = None

    @classmethod
    def _log(cls, *call) -> None:
        cls.calls.append(call)
        if os.environ.get("FAKE_PICAMERA2_LOG"):
            with open(os.environ["FAKE_PICAMERA2_LOG"], "a") as f:
                f.write(" ".join(map(str, call)) + "\n")

    @staticmethod
    def global_camera_info() -> list:
        return [dict(c) for c in Picamera2.cameras]

    def __init__(self, camera_num=0, verbose_console=None, tuning=None, allocator=None):
        self.is_open = self.started = False
        num = self.global_camera_info()[camera_num]["Num"]  # IndexError, as in picamera2
        try:
            if num in Picamera2.held:
                raise RuntimeError("Failed to acquire camera: Device or resource busy")
        except Exception:  # noqa: BLE001  as picamera2.py wraps every failure to open
            raise RuntimeError("Camera __init__ sequence did not complete.")
        Picamera2.held.add(num)
        self.camera_idx, self.is_open, self.camera_config, self.frames = num, True, None, 0
        self.camera_controls = {"FrameDurationLimits": (100, 1000000000, 33333)}
        self._log("open", num)

    def _create(self, use_case, main, controls, default_format, default_size):
        main = {"format": default_format, "size": default_size, **(main or {})}
        return {"use_case": use_case, "main": main, "lores": None, "raw": None,
                "controls": dict(controls or {}), "buffer_count": 6, "queue": True}

    def create_video_configuration(self, main=None, lores=None, raw=None, controls=None, **kwargs):
        return self._create("video", main, controls, "XBGR8888", (1280, 720))

    def create_preview_configuration(self, main=None, lores=None, raw=None, controls=None,
                                     **kwargs):
        return self._create("preview", main, controls, "XBGR8888", (640, 480))

    def configure(self, camera_config="preview") -> None:
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        config = {**camera_config, "main": dict(camera_config["main"])}
        if config["main"]["format"] not in MEMORY_ORDER:
            raise RuntimeError(f"Bad format {config['main']['format']} in stream main")
        if Picamera2.force_format:
            config["main"]["format"] = Picamera2.force_format
        self.camera_config = config
        self._log("configure", config["main"]["format"], config["main"]["size"],
                  config["controls"].get("FrameDurationLimits"))

    def stream_configuration(self, name="main") -> dict:
        return self.camera_config[name]

    def start(self, config=None, show_preview=False) -> None:
        if self.camera_config is None:
            raise RuntimeError("Camera has not been configured")
        self.started = True
        self._log("start")

    def capture_array(self, name="main", wait=None, signal_function=None) -> np.ndarray:
        if not self.started:
            raise RuntimeError("Camera is not running")
        if Picamera2.fail_reads_after is not None and self.frames >= Picamera2.fail_reads_after:
            raise RuntimeError("Camera frontend has timed out!")
        time.sleep(FRAME_S)
        self.frames += 1
        fmt = self.camera_config[name]["format"]
        w, h = self.camera_config[name]["size"]
        rows = np.linspace(0, len(self.scene_rgb) - 1, h).astype(int)
        cols = np.linspace(0, self.scene_rgb.shape[1] - 1, w).astype(int)
        scene = self.scene_rgb[rows][:, cols]  # (h, w, 3) RGB, nearest-neighbour scaled
        order = MEMORY_ORDER[fmt](scene[..., 0], scene[..., 1], scene[..., 2])
        channels = [np.broadcast_to(np.asarray(c, np.uint8), scene.shape[:2]) for c in order]
        return np.stack(channels, axis=-1)

    def stop(self) -> None:
        if self.started:
            self.started = False
            self._log("stop")

    def close(self) -> None:
        if not self.is_open:
            return
        self.stop()
        Picamera2.held.discard(self.camera_idx)
        self.is_open = False
        self._log("close")


def module() -> types.ModuleType:
    mod = types.ModuleType("picamera2")
    mod.Picamera2 = Picamera2
    return mod


def import_fails(monkeypatch, tmp_path, name: str, error: str) -> None:
    """``import name`` raises ``error`` (Python source, e.g. 'ValueError("...")') from now on."""
    package = tmp_path / name
    package.mkdir()
    (package / "__init__.py").write_text(f"raise {error}\n")
    monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))


def install(monkeypatch, scene_rgb: np.ndarray | None = None) -> type[Picamera2]:
    """sys.modules["picamera2"] = this stand-in, reset; returns its Picamera2 class."""
    Picamera2.reset()
    if scene_rgb is not None:
        Picamera2.scene_rgb = scene_rgb
    monkeypatch.setitem(sys.modules, "picamera2", module())
    return Picamera2
