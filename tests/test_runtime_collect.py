"""runtime.image.collect and ``cifar-run --collect``: only inputs below the threshold are kept,
at most one per interval, the folder never over its cap (oldest first), every saved file
complete; from a fake frame source, images on disk, and a real generated video file."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import ListSource, solid_frame as frame
from PIL import Image

from runtime.camera import live
from runtime.cli.run import main
from runtime.errors import OptionError
from runtime.image import collect
from runtime.image.collect import INDEX, CollectOptions, Collector, parse_duration, parse_size
from runtime.model.classifier import Classifier, Prediction

GREY_BGR, RED_BGR = (128, 128, 128), (0, 0, 255)  # the tiny model: ~47% cat, ~95% airplane


def noise(seed: int, w=80, h=60) -> np.ndarray:
    """A frame that JPEG cannot shrink much: ~10 KB each."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def guess(confidence: float) -> Prediction:
    return Prediction((("cat", confidence), ("dog", 1.0 - confidence)), np.array([confidence, 1 - confidence]))


class Clock:
    """Monotonic seconds and UTC time that move only when told to."""

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def utc(self) -> datetime:
        return datetime(2026, 12, 2, 15, 0, tzinfo=timezone.utc) + timedelta(seconds=self.t)


def collector(folder: Path, clock: Clock, **options) -> Collector:
    return Collector(CollectOptions(folder, **options), model="tiny.onnx", clock=clock, now=clock.utc)


def index_rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / INDEX).read_text().splitlines()]


def jpegs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix == ".jpg")


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.name != collect.LOCK)  # the cap: JPEGs + index


def assert_complete(folder: Path) -> None:
    """Every JPEG decodes to its end, the index names exactly the JPEGs, no temporary file (the
    commands' lock file, which stays, is none)."""
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != collect.LOCK]
    for name in jpegs(folder):
        with Image.open(folder / name) as image:
            image.load()  # raises on a truncated file
            assert image.format == "JPEG"
    assert [row["file"] for row in index_rows(folder)] == jpegs(folder)


@pytest.fixture(scope="module")
def clf(tiny_model):
    return Classifier(tiny_model, provider="cpu", threads=1)


# -- sizes and durations -----------------------------------------------------------------------

def test_sizes_and_durations_parse():
    assert parse_size("500MB") == 500_000_000 and parse_size("2GiB") == 2 * 1024 ** 3
    assert parse_size("1000") == 1000 and parse_size("1.5kB") == 1500
    assert parse_duration("2s") == 2.0 and parse_duration("500ms") == 0.5
    assert parse_duration("1m") == 60.0 and parse_duration("0") == 0.0
    for bad in ("", "MB", "-5MB", "5XB", "five"):
        with pytest.raises(OptionError, match="is not a size"):
            parse_size(bad)
    with pytest.raises(OptionError, match=r"'2 days' is not a duration, e\.g\. 2s"):
        parse_duration("2 days")


# -- the Collector -----------------------------------------------------------------------------

def test_only_inputs_below_the_threshold_are_saved(tmp_path):
    clock = Clock()
    c = collector(tmp_path / "c", clock, below=0.6, every_s=0.0)
    saved = [c.offer(guess(p), frame_bgr=frame(GREY_BGR), source="cam", frame=i)
             for i, p in enumerate([0.9, 0.59, 0.6, 0.2, 0.99])]
    assert [s is not None for s in saved] == [False, True, False, True, False]
    rows = index_rows(tmp_path / "c")
    assert [(r["frame"], r["confidence"]) for r in rows] == [(1, 0.59), (3, 0.2)]
    assert rows[0]["model"] == "tiny.onnx" and rows[0]["source"] == "cam" and rows[0]["label"] == "cat"
    assert rows[0]["top_k"] == [{"label": "cat", "probability": 0.59}, {"label": "dog", "probability": 0.41}]
    assert rows[0]["time"] == "2026-12-02T15:00:00.000Z" and rows[0]["file"] == saved[1].name
    with Image.open(saved[1]) as image:  # the full frame, its colours kept
        assert image.size == (80, 60) and abs(image.getpixel((40, 30))[0] - 128) <= 2
    assert_complete(tmp_path / "c")


def test_rate_limit(tmp_path):
    clock = Clock()
    c = collector(tmp_path, clock, every_s=2.0)
    kept = []
    for step in range(10):  # one unsure frame every 0.5 s for 5 s
        clock.t = step * 0.5
        if c.offer(guess(0.3), frame_bgr=frame(GREY_BGR)) is not None:
            kept.append(clock.t)
    assert kept == [0.0, 2.0, 4.0]
    assert len(index_rows(tmp_path)) == 3


def test_disk_cap_is_never_exceeded_and_the_oldest_go_first(tmp_path):
    clock = Clock()
    cap = 50_000
    c = collector(tmp_path, clock, every_s=0.0, max_bytes=cap)
    names = []
    for i in range(30):
        clock.t = float(i)
        names.append(c.offer(guess(0.1), frame_bgr=noise(i)).name)
        assert disk_bytes(tmp_path) <= cap
        assert disk_bytes(tmp_path) == c.bytes_on_disk
    kept = jpegs(tmp_path)
    assert 2 <= len(kept) < 30 and kept == names[-len(kept):]  # the newest, in order
    assert c.removed == 30 - len(kept)
    assert_complete(tmp_path)


def test_a_frame_larger_than_the_cap_is_not_saved(tmp_path):
    c = collector(tmp_path, Clock(), every_s=0.0, max_bytes=1000)
    assert c.offer(guess(0.1), frame_bgr=noise(0)) is None
    assert jpegs(tmp_path) == []


def test_a_failed_write_leaves_no_file_and_no_line(tmp_path, monkeypatch):
    clock = Clock()
    c = collector(tmp_path, clock, every_s=0.0)
    c.offer(guess(0.1), frame_bgr=frame(GREY_BGR))
    real_replace = os.replace

    def crash(src, dst):  # the power goes as the JPEG is renamed into place
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    clock.t = 1.0
    with pytest.raises(OSError, match="disk gone"):
        c.offer(guess(0.1), frame_bgr=noise(1))
    monkeypatch.setattr(os, "replace", real_replace)
    assert len(jpegs(tmp_path)) == 1 and len(index_rows(tmp_path)) == 1
    assert_complete(tmp_path)


def test_a_crash_mid_write_is_cleaned_up_by_the_next_run(tmp_path):
    clock = Clock()
    c = collector(tmp_path, clock, every_s=0.0)
    first = c.offer(guess(0.1), frame_bgr=frame(GREY_BGR))
    # What a killed process leaves: a hidden temporary JPEG half written, an index line cut short.
    (tmp_path / f".{first.name}.x1y2.jpg").write_bytes(first.read_bytes()[:100])
    with open(tmp_path / INDEX, "ab") as fh:
        fh.write(b'{"time": "2026-12-02T15:00:01')
    again = collector(tmp_path, clock, every_s=0.0)
    assert again.bytes_on_disk == disk_bytes(tmp_path)
    assert_complete(tmp_path)
    clock.t = 5.0
    again.offer(guess(0.1), frame_bgr=frame(GREY_BGR))
    assert len(index_rows(tmp_path)) == 2
    assert_complete(tmp_path)


def test_collect_folder_must_be_a_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(collect.SourceError, match="exists and is not a directory"):
        collector(tmp_path / "file", Clock())


def test_one_process_per_folder(tmp_path):
    first = Collector(CollectOptions(tmp_path), model="a.onnx", exclusive=True)
    with pytest.raises(collect.SourceError, match=f"--collect {tmp_path}: in use by pid {os.getpid()}; one cifar-run"):
        Collector(CollectOptions(tmp_path), model="b.onnx", exclusive=True)
    Collector(CollectOptions(tmp_path), model="c.onnx")  # the library's own use: no claim
    first.close()
    second = Collector(CollectOptions(tmp_path), model="b.onnx", exclusive=True)  # free again
    assert (tmp_path / collect.LOCK).read_text() == f"pid {os.getpid()}\n"
    second.close()
    assert jpegs(tmp_path) == [] and not (tmp_path / INDEX).exists()  # the lock is no frame
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "read-only"
        locked.mkdir(mode=0o555)
        with pytest.raises(collect.SourceError, match=f"--collect {locked}: cannot write there"):
            Collector(CollectOptions(locked), model="a.onnx", exclusive=True)


# -- the camera loop and the images command ----------------------------------------------------

def test_run_camera_collects_the_unsure_frames_of_a_fake_source(clf, tmp_path, monkeypatch):
    frames = [frame(GREY_BGR if i % 3 == 0 else RED_BGR) for i in range(12)]
    monkeypatch.setattr(live, "open_source", lambda *_a, **_k: ListSource(frames))
    lines = []
    code = live.run_camera(clf, "fake", live.CameraOptions(
        headless=True, collect=CollectOptions(tmp_path, below=0.6, every_s=0.0)), log=lines.append)
    assert code == 0
    assert [row["frame"] for row in index_rows(tmp_path)] == [0, 3, 6, 9]
    assert all(row["confidence"] < 0.6 and row["model"] == clf.model_path.name for row in index_rows(tmp_path))
    assert any(line.startswith("collected 4 input(s) below 60% confidence") for line in lines)
    assert_complete(tmp_path)


def test_cli_images_collect(tiny_model, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, bgr in [("grey.png", GREY_BGR), ("red.png", RED_BGR), ("grey2.png", GREY_BGR)]:
        Image.fromarray(frame(bgr)[:, :, ::-1]).save(photos / name)
    out = tmp_path / "unsure"
    r = CliRunner().invoke(main, [str(photos), "--model", str(tiny_model), "--collect", str(out)])
    assert r.exit_code == 0, r.output
    rows = index_rows(out)
    assert sorted(Path(row["source"]).name for row in rows) == ["grey.png", "grey2.png"]  # no rate limit
    assert "collected 2 input(s)" in r.stderr
    assert_complete(out)


@pytest.mark.parametrize("args, message", [
    (["--collect-max", "5XB"], "'5XB' is not a size"),
    (["--collect-every", "soon"], "'soon' is not a duration"),
])
def test_cli_bad_sizes_and_durations_are_one_line(tiny_model, tmp_path, args, message):
    r = CliRunner().invoke(main, ["--model", str(tiny_model), "--collect", str(tmp_path / "c"), *args])
    assert r.exit_code == 2 and message in r.stderr
    assert "Traceback" not in r.output


def test_cli_collect_options_need_collect(tiny_model):
    r = CliRunner().invoke(main, ["--model", str(tiny_model), "--collect-below", "0.5"])
    assert r.exit_code == 2 and "go with --collect DIR" in r.stderr


def test_cli_video_file_saves_only_frames_below_the_threshold(tiny_model, tmp_path):
    cv2 = pytest.importorskip("cv2")
    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (96, 64))
    for i in range(60):  # 10 grey frames (the model unsure), then 10 red (sure), three times
        writer.write(frame(GREY_BGR if (i // 10) % 2 == 0 else RED_BGR, 96, 64))
    writer.release()
    out = tmp_path / "unsure"
    r = CliRunner().invoke(main, ["--camera", str(clip), "--model", str(tiny_model), "--headless", "--json",
                                  "--collect", str(out), "--collect-every", "0"])
    assert r.exit_code == 0, r.output
    unsure = {row["frame"] for row in map(json.loads, r.stdout.splitlines()) if row["confidence"] < 0.6}
    assert len(unsure) == 30
    assert {row["frame"] for row in index_rows(out)} == unsure
    assert_complete(out)
    capped = tmp_path / "capped"
    size = (out / jpegs(out)[0]).stat().st_size
    cap = 5 * size + 2000
    r = CliRunner().invoke(main, ["--camera", str(clip), "--model", str(tiny_model), "--headless",
                                  "--collect", str(capped), "--collect-every", "0", "--collect-max", str(cap)])
    assert r.exit_code == 0, r.output
    assert disk_bytes(capped) <= cap and {row["frame"] for row in index_rows(capped)} <= unsure
    assert max(row["frame"] for row in index_rows(capped)) == max(unsure)  # the newest kept
    assert "oldest removed" in r.stderr
    assert_complete(capped)


def test_a_failing_disk_stops_collecting_not_the_camera(clf, tmp_path, monkeypatch):
    monkeypatch.setattr(live, "open_source", lambda *_a, **_k: ListSource([frame(GREY_BGR)] * 5))

    def full(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Collector, "offer", full)
    lines = []
    code = live.run_camera(clf, "fake", live.CameraOptions(
        headless=True, collect=CollectOptions(tmp_path, every_s=0.0)), log=lines.append)
    assert code == 0 and "5 frame(s) classified" in lines
    assert sum("no longer collecting" in line for line in lines) == 1
