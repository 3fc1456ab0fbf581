"""cifar-run --camera csi://N: the GStreamer pipeline for a Jetson CSI camera, how it is opened,
and the one-line error when OpenCV has no GStreamer (pip's wheels never do)."""

from __future__ import annotations

import types

import pytest
from click.testing import CliRunner
from fake_picamera2 import import_fails

from runtime.camera import sources
from runtime.cli.run import main
from runtime.errors import SourceError


def test_pipeline_for_sensor_size_and_fps():
    assert sources.csi_pipeline(0) == (
        "nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=1280,height=720,"
        "framerate=30/1 ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! "
        "video/x-raw,format=BGR ! appsink drop=1 max-buffers=1")
    assert sources.csi_pipeline(1, (1920, 1080), 60).startswith(
        "nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM),width=1920,height=1080,"
        "framerate=60/1 ! ")


class FakeCapture:
    opened: list[tuple] = []

    def __init__(self, spec, api=None):
        FakeCapture.opened.append((spec, api))

    def isOpened(self):
        return True

    def get(self, prop):
        return 30.0

    def read(self):
        return False, None

    def release(self):
        pass


def fake_cv2(gstreamer: bool):
    return types.SimpleNamespace(
        __version__="4.8.0", CAP_GSTREAMER=1800, CAP_PROP_FPS=5, VideoCapture=FakeCapture,
        getBuildInformation=lambda: f"  Video I/O:\n    GStreamer:                   "
                                    f"{'YES (1.20.3)' if gstreamer else 'NO'}\n")


def test_csi_opens_the_pipeline_with_gstreamer(monkeypatch):
    monkeypatch.setattr(sources, "opencv", lambda: fake_cv2(gstreamer=True))
    FakeCapture.opened = []
    source = sources.open_source("csi://1", size=(640, 480), fps=15)
    assert source.live and source.name == "csi://1"
    source.release()
    assert FakeCapture.opened == [(sources.csi_pipeline(1, (640, 480), 15), 1800)]


def test_csi_without_gstreamer_says_how_to_fix(monkeypatch):
    monkeypatch.setattr(sources, "opencv", lambda: fake_cv2(gstreamer=False))
    with pytest.raises(SourceError, match=r"^csi://0: .*OpenCV \(4\.8\.0\) was built without "
                                          r"GStreamer.*sudo apt install python3-opencv"):
        sources.open_source("csi://0")
    with pytest.raises(SourceError, match="write picam, picam:N or csi://N"):
        sources.open_source("csi://front")


def test_cli_csi_with_pypi_opencv_is_one_line(tiny_model):
    cv2 = pytest.importorskip("cv2")
    if sources._has_gstreamer(cv2):
        pytest.skip("this OpenCV has GStreamer")
    r = CliRunner().invoke(main, ["--camera", "csi://0", "--camera-size", "1280x720",
                                  "--camera-fps", "30", "--model", str(tiny_model), "--headless"])
    assert r.exit_code == 1 and len(r.stderr.splitlines()) == 1, r.stderr
    line = r.stderr.strip()
    assert line.startswith("cifar-run: error: csi://0: needs a GStreamer pipeline, but this "
                           f"OpenCV ({cv2.__version__}) was built without GStreamer")
    assert "python3-opencv" in line and "--system-site-packages" in line
    assert "pip uninstall opencv-python opencv-python-headless" in line


def test_system_opencv_under_numpy_2_is_explained(monkeypatch, tmp_path):
    """JetPack's (or Raspberry Pi OS's) cv2, built for NumPy 1.x, imported under a pip NumPy 2."""
    import_fails(monkeypatch, tmp_path, "cv2", 'ImportError("numpy.core.multiarray failed to import")')
    with pytest.raises(SourceError, match=r"OpenCV cannot load with NumPy .*pip install 'numpy<2'"):
        sources.opencv()
