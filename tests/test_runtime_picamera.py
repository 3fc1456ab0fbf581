"""cifar-run --camera picam: a Raspberry Pi camera through picamera2, tested against a stand-in
module (tests/fake_picamera2.py) that behaves as picamera2's source does. No OpenCV needed:
headless runs without --save draw nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import fake_picamera2
import numpy as np
import pytest
from click.testing import CliRunner

from runtime.camera import live, loop, sources
from runtime.camera.picamera import BGR_INDEX, PicameraSource, to_frame_bgr
from runtime.cli import run as cli
from runtime.errors import ExitCode, SourceError
from runtime.model.classifier import Classifier

REPO = Path(__file__).resolve().parents[1]
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)  # RGB, as the scene is described
FORMATS = list(BGR_INDEX)  # RGB888, BGR888, XRGB8888, XBGR8888


def scene(*colours_rgb) -> np.ndarray:
    """Vertical patches of the given RGB colours, (8, 8 * n, 3) uint8 RGB."""
    return np.concatenate([np.full((8, 8, 3), c, np.uint8) for c in colours_rgb], axis=1)


@pytest.fixture
def camera(monkeypatch):
    return fake_picamera2.install(monkeypatch)


@pytest.fixture(scope="module")
def clf(tiny_model):
    return Classifier(tiny_model, provider="cpu", threads=1)


def calls(camera) -> list[str]:
    return [c[0] for c in camera.calls]


def run(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


# -- byte order: every format gives the same frame_bgr -----------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_to_frame_bgr_reads_each_formats_memory_order(fmt):
    memory = np.array([[fake_picamera2.MEMORY_ORDER[fmt](*c) for c in (RED, GREEN, BLUE)]], np.uint8)
    frame_bgr = to_frame_bgr(memory, fmt)
    assert frame_bgr.shape == (1, 3, 3) and frame_bgr.flags.c_contiguous
    assert frame_bgr.tolist() == [[[0, 0, 255], [0, 255, 0], [255, 0, 0]]]  # red, green, blue


def test_to_frame_bgr_rejects_what_it_cannot_read():
    with pytest.raises(SourceError, match="'YUV420'.*RGB888"):
        to_frame_bgr(np.zeros((6, 4), np.uint8), "YUV420")
    with pytest.raises(SourceError, match=r"\(H, W, 4\)"):
        to_frame_bgr(np.zeros((2, 4, 3), np.uint8), "XBGR8888")


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_gives_the_same_frame_and_label(camera, clf, fmt):
    """Whatever format libcamera settles on, the loop sees the scene's true colours: a red
    patch is BGR (0, 0, 255) and the tiny colour classifier says airplane (red), automobile
    (green), bird (blue) -- swapped R and B would say bird for red."""
    camera.force_format = fmt
    camera.scene_rgb = scene(RED, GREEN, BLUE)
    source = PicameraSource(0, size=(48, 16))
    try:
        frame_bgr = source.read()
        assert source.format == fmt and frame_bgr.shape == (16, 48, 3) and frame_bgr.dtype == np.uint8
        assert [tuple(frame_bgr[8, x]) for x in (8, 24, 40)] == [(0, 0, 255), (0, 255, 0), (255, 0, 0)]
        labels = [clf.predict(frame_bgr=frame_bgr[:, x:x + 16]).label for x in (0, 16, 32)]
        assert labels == ["airplane", "automobile", "bird"]
    finally:
        source.release()


def test_asks_for_rgb888_at_the_size_and_frame_rate(camera):
    source = PicameraSource(0, size=(320, 240), fps=15)
    source.release()
    assert camera.calls[1] == ("configure", "RGB888", (320, 240), (66667, 66667))
    assert calls(camera) == ["open", "configure", "start", "stop", "close"]
    PicameraSource(0).release()
    assert camera.calls[6] == ("configure", "RGB888", (640, 480), None)  # picamera2's 30 fps


# -- the loop: live, reconnecting, always stopped and closed ------------------------------------

def test_cli_headless_json_without_opencv_drawing(camera, tiny_model):
    camera.scene_rgb = scene(RED)
    r = run("--camera", "picam", "--model", tiny_model, "--headless", "--json", "--smooth", "2",
            "--max-frames", "4", "--camera-size", "64x48", "--camera-fps", "50")
    assert r.exit_code == 0, r.output
    rows = r.stdout.splitlines()
    assert len(rows) == 4 and all('"label": "airplane"' in row for row in rows)
    assert "reading live source picam" in r.stderr
    assert camera.calls[1] == ("configure", "RGB888", (64, 48), (20000, 20000))
    assert calls(camera)[-2:] == ["stop", "close"] and not camera.held


def test_picam_n_opens_that_camera(camera, tiny_model):
    camera.cameras.append({"Model": "imx219", "Id": "/base/axi/i2c@88000/imx219@10", "Num": 1})
    source = sources.open_source("picam:1", size=(32, 32))
    assert source.live and source.name == "picam:1" and source.read().shape == (32, 32, 3)
    source.release()
    assert camera.calls[0] == ("open", 1) and calls(camera)[-1] == "close"


def test_a_camera_that_stops_is_reopened_and_every_instance_closed(camera, clf):
    camera.fail_reads_after = 3  # "Camera frontend has timed out!" after 3 frames, each time
    source = sources.open_source("picam", stall_timeout_s=0.5, size=(32, 32))
    try:
        results = list(loop.classify_stream(source, clf, reconnect=2, backoff_s=0.01,
                                             max_frames=6))
    finally:
        source.release()
    assert len(results) == 6  # 3 frames, reopen, 3 frames
    assert calls(camera).count("open") == 2 and calls(camera).count("close") == 2
    assert not camera.held  # a reopen that skipped close() would have found the camera busy


class Raising:
    """A Classifier that raises ``exc`` (or sends ``signum`` to this process) at frame ``at``."""

    def __init__(self, clf, at, exc=None, signum=None):
        self.clf, self.at, self.exc, self.signum, self.n = clf, at, exc, signum, 0

    def predict(self, **kwargs):
        self.n += 1
        if self.n == self.at:
            if self.exc is not None:
                raise self.exc
            signal.raise_signal(self.signum)
        return self.clf.predict(**kwargs)

    def __getattr__(self, name):
        return getattr(self.clf, name)


def run_camera(clf, **kwargs):
    options = {"save": None, "headless": True, "fmt": "json", "full_frame": False, "smooth": 1,
               "min_confidence": 0.0, "reconnect": 0, "max_frames": 50, "duration": None,
               "size": (32, 32)}
    return live.run_camera(clf, "picam", live.CameraOptions(**{**options, **kwargs}))


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_stopped_and_closed_when_the_loop_raises(camera, clf, exc):
    with pytest.raises(type(exc)):
        run_camera(Raising(clf, 3, exc=exc))
    assert calls(camera)[-2:] == ["stop", "close"] and not camera.held


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stopped_and_closed_on_a_signal(camera, clf, sig, capsys):
    assert run_camera(Raising(clf, 3, signum=sig)) == ExitCode.INTERRUPTED
    assert f"stopped by {sig.name}" in capsys.readouterr().err
    assert calls(camera)[-2:] == ["stop", "close"] and not camera.held


def test_sigterm_to_a_running_cifar_run_releases_the_camera(tiny_model, tmp_path):
    """A real SIGTERM to another process running the loop on the stand-in camera."""
    log = tmp_path / "camera.log"
    code = ("import sys; sys.path.insert(0, sys.argv.pop(1)); import fake_picamera2; "
            "sys.modules['picamera2'] = fake_picamera2.module(); "
            "from runtime.cli.run import main; main()")
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(REPO / "tests"), "--camera", "picam", "--model",
         str(tiny_model), "--headless", "--camera-size", "32x32"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "FAKE_PICAMERA2_LOG": str(log)})
    try:
        for _ in range(3):
            assert proc.stdout.readline().startswith("frame"), proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "stopped by SIGTERM" in stderr, stderr
    assert [line.split()[0] for line in log.read_text().splitlines()] == [
        "open", "configure", "start", "stop", "close"]


# -- one-line errors ----------------------------------------------------------------------------

def one_line_error(r) -> str:
    assert r.exit_code == 1, r.output
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cifar-run: error: "), r.stderr
    return lines[0]


def test_no_camera_attached(camera, tiny_model):
    camera.cameras.clear()
    line = one_line_error(run("--camera", "picam", "--model", tiny_model, "--headless"))
    assert "picam:0: no camera attached" in line and "rpicam-hello --list-cameras" in line
    assert not camera.calls


def test_index_out_of_range_says_how_many(camera, tiny_model):
    line = one_line_error(run("--camera", "picam:2", "--model", tiny_model, "--headless"))
    assert line.endswith("picam:2: no such camera; libcamera sees 1: picam:0")


def test_busy_camera_names_the_usual_holders(camera, tiny_model):
    holder = camera(0)  # another process, as far as this one can tell
    line = one_line_error(run("--camera", "picam", "--model", tiny_model, "--headless"))
    assert "picam:0: the camera is busy: another process holds it" in line
    assert "cifar-run" in line and "rpicam-hello" in line
    holder.close()


def test_picamera2_not_installed(monkeypatch, tiny_model):
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import fails as for a missing package
    line = one_line_error(run("--camera", "picam", "--model", tiny_model, "--headless"))
    assert "picamera2 is not installed here" in line
    assert "sudo apt install python3-picamera2" in line and "--system-site-packages" in line


def test_numpy_clash_is_explained(monkeypatch, tmp_path, tiny_model):
    """The system picamera2's simplejpeg, built for Debian's NumPy 1.x, under a pip NumPy 2."""
    fake_picamera2.import_fails(monkeypatch, tmp_path, "picamera2", (
        'ValueError("numpy.dtype size changed, may indicate binary incompatibility. '
        'Expected 96 from C header, got 88 from PyObject")'))
    line = one_line_error(run("--camera", "picam", "--model", tiny_model, "--headless"))
    assert f"picamera2 cannot load with NumPy {np.__version__}" in line
    assert "numpy.dtype size changed" in line and "pip install 'numpy<2'" in line


def test_bad_specs_and_options(camera, tiny_model, tmp_path):
    line = one_line_error(run("--camera", "picam:x", "--model", tiny_model, "--headless"))
    assert "write picam, picam:N or csi://N" in line
    r = run("--camera", "picam", "--camera-size", "640by480", "--model", tiny_model)
    assert r.exit_code == 2 and "WIDTHxHEIGHT" in r.output
    r = run("--camera", str(tmp_path / "clip.mp4"), "--camera-fps", "10", "--model", tiny_model)
    assert r.exit_code == 2 and "apply to picam and csi:// cameras" in r.stderr


def test_importing_runtime_loads_neither_picamera2_nor_opencv():
    code = ("import sys, runtime, runtime.camera.sources, runtime.camera.picamera, runtime.cli.run\n"
            "loaded = [m for m in ('picamera2', 'libcamera', 'cv2') if m in sys.modules]\n"
            "assert not loaded, loaded\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
