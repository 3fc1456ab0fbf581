"""runtime.camera.sources and cifar-run --camera: fake and file sources, a source that stops
mid-stream, the overlay, the saved video, and clean shutdown on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

cv2 = pytest.importorskip("cv2")

from runtime.camera import loop, outputs, sources  # noqa: E402
from runtime.cli.run import main  # noqa: E402
from runtime.errors import SourceError  # noqa: E402
from runtime.model.classifier import Classifier  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RED_BGR, BLUE_BGR, GREEN_BGR = (0, 0, 255), (255, 0, 0), (0, 255, 0)


def frame(bgr, w=80, h=60) -> np.ndarray:
    out = np.zeros((h, w, 3), np.uint8)
    out[...] = bgr
    return out


class FakeSource:
    """Delivers ``frames``, then None. ``reopen`` restarts with ``after_reopen`` frames (a
    reconnected camera) or raises when ``reopen_fails``."""

    def __init__(self, frames, live=False, after_reopen=(), reopen_fails=False):
        self.name = "fake"
        self.live = live
        self._frames = list(frames)
        self._after = list(after_reopen)
        self.reopen_fails = reopen_fails
        self.reopens = 0
        self.released = False

    def read(self):
        return self._frames.pop(0) if self._frames else None

    def reopen(self):
        self.reopens += 1
        if self.reopen_fails:
            raise SourceError("fake: cannot reopen")
        self._frames, self._after = self._after, []

    def release(self):
        self.released = True


def write_video(path: Path, n: int, size=(96, 64), fps=30.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for i in range(n):
        writer.write(frame(RED_BGR if (i // 10) % 2 == 0 else BLUE_BGR, *size))
    writer.release()
    return path


def count_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), f"{path} does not open"
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


@pytest.fixture(scope="module")
def clf(tiny_model):
    return Classifier(tiny_model, provider="cpu", threads=1)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", 40)


# -- the loop ----------------------------------------------------------------------------------

def test_centre_square_is_classified(clf):
    # Red centre with blue side bars: the centre square sees only red.
    f = frame(BLUE_BGR, 180, 60)
    f[:, 60:120] = RED_BGR
    results = list(loop.classify_stream(FakeSource([f]), clf))
    assert len(results) == 1
    assert results[0].box == (60, 0, 120, 60) and results[0].label == "airplane"
    full = list(loop.classify_stream(FakeSource([f]), clf, full_frame=True))
    assert full[0].box is None and full[0].label == "bird"  # two thirds blue when stretched


def test_bounds_and_stop(clf):
    frames = [frame(RED_BGR)] * 20
    assert len(list(loop.classify_stream(FakeSource(frames), clf, max_frames=5))) == 5
    stop = threading.Event()
    got = []
    for r in loop.classify_stream(FakeSource(frames), clf, stop=stop):
        got.append(r)
        if r.index == 2:
            stop.set()
    assert len(got) == 3
    endless = FakeSource([frame(RED_BGR)] * 10_000)
    t0 = time.monotonic()
    list(loop.classify_stream(endless, clf, duration_s=0.2))
    assert time.monotonic() - t0 < 2.0


def test_smoothing_and_uncertain(clf):
    frames = [frame(RED_BGR)] * 3 + [frame(BLUE_BGR)]
    raw = list(loop.classify_stream(FakeSource(frames), clf))
    smooth = list(loop.classify_stream(FakeSource(frames), clf, smooth=4))
    assert raw[-1].label == "bird" and smooth[-1].label == "airplane"  # 3 red vs 1 blue
    np.testing.assert_allclose(smooth[-1].prediction.probabilities,
                               np.mean([r.prediction.probabilities for r in raw], axis=0), atol=1e-6)
    unsure = list(loop.classify_stream(FakeSource([frame((128, 128, 128))]), clf,
                                        min_confidence=0.9))
    assert unsure[0].label == loop.UNCERTAIN
    d = unsure[0].to_dict()
    assert d["label"] == "uncertain" and {"classify_ms", "ort_ms", "fps", "top_k"} <= set(d)
    from runtime.image.draw import UNCERTAIN_RGB, caption

    text, rgb = unsure[0].overlay_lines()[0]  # the frame's overlay words it as images and the stream do
    assert (text, rgb) == (caption(unsure[0].prediction, min_confidence=0.9), UNCERTAIN_RGB)
    assert text.startswith("uncertain (")


def test_live_source_reconnects(clf):
    src = FakeSource([frame(RED_BGR)] * 3, live=True, after_reopen=[frame(BLUE_BGR)] * 2)
    results = list(loop.classify_stream(src, clf, reconnect=2, backoff_s=0.01, max_frames=5))
    assert [r.label for r in results] == ["airplane"] * 3 + ["bird"] * 2
    assert src.reopens == 1


def test_live_source_that_stops_gives_a_clear_error(clf):
    src = FakeSource([frame(RED_BGR)] * 3, live=True, reopen_fails=True)
    seen = []
    with pytest.raises(SourceError, match="stopped delivering frames.*3 reconnect"):
        for r in loop.classify_stream(src, clf, reconnect=3, backoff_s=0.01):
            seen.append(r)
    assert len(seen) == 3 and src.reopens == 3


def test_video_file_ends_without_reconnect(clf):
    src = FakeSource([frame(RED_BGR)] * 4, live=False)
    assert len(list(loop.classify_stream(src, clf, reconnect=5))) == 4
    assert src.reopens == 0


def test_latest_frame_reader_drops_old_frames():
    class Counter:
        name, live = "counter", True

        def __init__(self):
            self.i = 0

        def read(self):
            time.sleep(0.001)
            self.i += 1
            return None if self.i > 200 else np.full((2, 2, 3), self.i % 256, np.uint8)

        def release(self):
            pass

    reader = sources.LatestFrameReader(Counter(), timeout_s=1.0)
    first = reader.read()
    time.sleep(0.1)  # a slow consumer: many frames arrive meanwhile
    second = reader.read()
    assert int(second[0, 0, 0]) > int(first[0, 0, 0]) + 1  # skipped to the newest
    while reader.read() is not None:
        pass  # drains, then None once the source ended
    assert reader.read() is None
    reader.release()


# -- overlay and saving ------------------------------------------------------------------------

def test_annotate_frame_is_pure(clf):
    f = frame(RED_BGR, 160, 120)
    result = next(loop.classify_stream(FakeSource([f]), clf))
    before = f.copy()
    out = outputs.annotate_frame(f, result)
    assert np.array_equal(f, before) and out.shape == f.shape and not np.array_equal(out, f)
    assert tuple(out[60, 20]) == (0, 255, 0)  # the box's left edge at x=20


def test_video_saver(tmp_path):
    with outputs.VideoSaver(tmp_path / "a.mp4", fps=10) as saver:
        for _ in range(5):
            saver.write(frame(RED_BGR))
        saver.write(frame(RED_BGR, 40, 30))  # resized to the first frame's size
    assert count_frames(tmp_path / "a.mp4") == 6
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "a.mp4").stat().st_mode & 0o777 == 0o666 & ~umask  # as readable as any file, not 0600
    empty = outputs.VideoSaver(tmp_path / "b.avi")
    assert empty.close() is None and not (tmp_path / "b.avi").exists()
    assert not list(tmp_path.glob(".*"))  # temp files gone
    with pytest.raises(SourceError, match="suffix"):
        outputs.VideoSaver(tmp_path / "c.gif")


def test_file_source_reads_every_frame(clip):
    src = sources.open_source(str(clip))
    assert not src.live and src.fps == pytest.approx(30.0)
    n = 0
    while src.read() is not None:
        n += 1
    src.release()
    assert n == 40


def test_sources_that_cannot_open(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        sources.open_source(str(tmp_path / "nope.mp4"))
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    with pytest.raises(SourceError, match="junk.mp4"):
        sources.open_source(str(tmp_path / "junk.mp4"))
    assert sources.is_live("0") and sources.is_live("rtsp://cam/stream") and sources.is_live("/dev/video0")
    assert sources.is_live("v4l2src ! videoconvert ! appsink") and not sources.is_live("clip.mp4")


# -- cifar-run --camera -------------------------------------------------------------------------

def test_cli_camera_file_headless_save(tiny_model, tmp_path):
    src = write_video(tmp_path / "in.mp4", 120)
    out = tmp_path / "out.mp4"
    r = CliRunner().invoke(main, ["--camera", str(src), "--model", str(tiny_model), "--headless",
                                  "--save", str(out), "--max-frames", "100"])
    assert r.exit_code == 0, r.output
    lines = [line for line in r.stdout.splitlines() if line.startswith("frame")]
    assert len(lines) == 100 and "airplane" in lines[0] and "fps" in lines[0]
    assert count_frames(out) == 100


def test_cli_camera_json(tiny_model, clip):
    r = CliRunner().invoke(main, ["--camera", str(clip), "--model", str(tiny_model), "--headless",
                                  "--json", "--full-frame", "--smooth", "3"])
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert r.exit_code == 0 and len(rows) == 40
    assert rows[0]["label"] == "airplane" and rows[0]["frame"] == 0


def test_cli_camera_cannot_open(tiny_model, tmp_path):
    r = CliRunner().invoke(main, ["--camera", str(tmp_path / "none.mp4"), "--model", str(tiny_model),
                                  "--headless"])
    assert r.exit_code == 1 and "none.mp4" in r.stderr and "cannot open" in r.stderr


def test_cli_camera_rejects_sources_and_grid(tiny_model, clip):
    r = CliRunner().invoke(main, ["x.jpg", "--camera", str(clip), "--model", str(tiny_model)])
    assert r.exit_code == 2


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_and_leaves_a_playable_video(tiny_model, tmp_path, sig):
    src = write_video(tmp_path / "long.mp4", 300)  # 10 s at 30 fps with --realtime
    out = tmp_path / "out.mp4"
    code = "from runtime.cli.run import main; main()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--camera", str(src), "--model", str(tiny_model),
         "--headless", "--realtime", "--save", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        for _ in range(5):
            assert proc.stdout.readline().startswith("frame"), proc.stderr.read()
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert f"stopped by {sig.name}" in stderr
    n = count_frames(out)
    assert 5 <= n < 300
    assert not list(tmp_path.glob(".out.mp4*"))  # the temp file was renamed into place


def test_missing_camera_is_one_line_without_opencv_warnings(tiny_model):
    """OpenCV prints "[ WARN:0@0.01] ... can't open camera by index" from C++ straight to
    stderr; it must stay off it, since the one SourceError line already says so."""
    if Path("/dev/video9").exists():
        pytest.skip("this machine has a /dev/video9")
    proc = subprocess.run(
        [sys.executable, "-c", "from runtime.cli.run import main; main()", "--camera", "9",
         "--model", str(tiny_model), "--headless"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 1, proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("cifar-run: error: cannot open camera '9'"), proc.stderr
    assert "[ WARN" not in proc.stderr and proc.stdout == ""


def test_opening_restores_opencv_log_level():
    log = cv2.utils.logging
    before = log.getLogLevel()
    log.setLogLevel(log.LOG_LEVEL_WARNING)
    try:
        with pytest.raises(SourceError, match="cannot open camera '9'"):
            sources.OpenCVSource("9")
        assert log.getLogLevel() == log.LOG_LEVEL_WARNING
    finally:
        log.setLogLevel(before)


def test_smoothed_prediction_keeps_onnxruntime_time(clf):
    """FrameResult.classify_ms is preprocessing + onnxruntime; the prediction's own ort_ms
    stays onnxruntime time alone, smoothed or not, and preprocess_ms is the difference."""
    frames = [frame(RED_BGR, 640, 480)] * 3
    for smooth in (1, 3):
        for r in loop.classify_stream(FakeSource(frames), clf, smooth=smooth):
            assert 0 < r.prediction.ort_ms < r.classify_ms
            assert r.ort_ms == r.prediction.ort_ms and r.preprocess_ms == pytest.approx(r.classify_ms - r.ort_ms)
