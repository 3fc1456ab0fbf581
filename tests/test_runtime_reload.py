"""runtime.model.reload and ``cifar-run --camera --reload``: a new model file that passes its
checks replaces the running one between frames, with no frame dropped; a corrupt one is
refused, says why, and the old model keeps answering."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import ListSource, solid_frame as frame

from runtime.camera import live
from runtime.cli.run import main as cifar_run
from runtime.image.collect import INDEX, CollectOptions, model_file_id
from runtime.model import bundled
from runtime.model.classifier import Classifier
from runtime.model.reload import ModelWatcher

GREY_BGR = (128, 128, 128)


def wait_until(condition, limit_s: float = 60.0) -> None:
    """Poll ``condition`` (a bound on a hang, not a timing being tested)."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.01)


def replace_with(target: Path, data: bytes) -> None:
    """Write ``data`` beside ``target`` and rename it over: how an export lands (atomically)."""
    tmp = target.with_suffix(".part")
    tmp.write_bytes(data)
    os.replace(tmp, target)


@pytest.fixture
def watched(tiny_model, tmp_path) -> Path:
    path = tmp_path / "model.onnx"
    shutil.copyfile(tiny_model, path)
    return path


def test_watcher_refuses_a_corrupt_file_then_takes_a_good_one(watched):
    loads, refusals = [], []

    def load():
        loads.append(1)
        return Classifier(watched, provider="cpu", threads=1)

    watcher = ModelWatcher(watched, load, on_refused=refusals.append)  # not started: looked at by hand
    watcher.check()
    assert loads == [] and watcher.take() is None  # unchanged
    replace_with(watched, b"not an onnx file at all")
    watcher.check()
    assert loads == []  # changed once: it may still be being written
    watcher.check()
    assert loads == [1] and watcher.take() is None
    assert refusals == [watcher.refused] and str(watched) in watcher.refused
    watcher.check()
    assert loads == [1]  # the same refused file is not tried again
    replace_with(watched, bundled.default_model().read_bytes())
    watcher.check()
    watcher.check()
    fresh = watcher.take()
    assert fresh is not None and fresh.self_check.status == "passed" and watcher.refused is None
    assert watcher.take() is None  # handed over once


def test_watcher_waits_for_a_file_that_is_still_changing(watched):
    loads = []

    class Loaded:
        def describe(self):
            return "a model"

    watcher = ModelWatcher(watched, lambda: loads.append(1) or Loaded())
    with open(watched, "ab") as fh:  # a copy still arriving (cp writes in place), one look at a time
        for chunk in (b"a", b"b", b"c"):
            fh.write(chunk)
            fh.flush()
            watcher.check()
    assert loads == []
    watcher.check()  # the same at the next look: now it is loaded
    assert loads == [1] and isinstance(watcher.take(), Loaded)


class SteppedSource(ListSource):
    """A frame each time the test allows one; None once ``done``. ``delivered`` counts the
    frames, ``reads`` the calls (one more than the frames: the loop is done with the last)."""

    def __init__(self):
        super().__init__([])
        self.allow, self.done, self.delivered, self.reads = threading.Semaphore(0), threading.Event(), 0, 0

    def read(self):
        self.reads += 1
        self.allow.acquire()
        if self.done.is_set():
            return None
        self.delivered += 1
        return frame(GREY_BGR)


def test_reload_while_frames_flow(watched, monkeypatch, capsys, tmp_path):
    source = SteppedSource()
    monkeypatch.setattr(live, "open_source", lambda *_a, **_k: source)
    old = Classifier(watched, provider="cpu", threads=1)
    old_id = model_file_id(watched)
    logged = []
    options = live.CameraOptions(headless=True, fmt="json", reload_every_s=0.02,
                                 reload=lambda: Classifier(watched, provider="cpu", threads=1),
                                 collect=CollectOptions(tmp_path / "unsure", below=1.01, every_s=0.0))
    failed = []

    def drive():  # on a thread of its own: run_camera, which handles signals, keeps the main one
        allowed = [0]

        def frames(n):  # n more frames, classified and printed
            allowed[0] += n
            for _ in range(n):
                source.allow.release()
            wait_until(lambda: source.reads == allowed[0] + 1)

        try:
            wait_until(lambda: any(line.startswith("watching ") for line in logged))
            frames(3)
            replace_with(watched, b"\x08\x01corrupt")
            wait_until(lambda: any("refused" in line for line in logged))
            frames(3)  # the old model goes on
            replace_with(watched, bundled.default_model().read_bytes())
            wait_until(lambda: any("passed its checks" in line for line in logged))
            frames(3)
        except BaseException as exc:
            failed.append(exc)
        finally:
            source.done.set()
            source.allow.release()

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    assert live.run_camera(old, "fake", options, log=logged.append) == 0
    driver.join(60)
    assert not failed, failed
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["frame"] for row in rows] == list(range(9)) and source.delivered == 9  # none dropped
    new = Classifier(bundled.default_model(), provider="cpu", threads=1)
    grey_old, grey_new = (clf.predict(frame_bgr=frame(GREY_BGR)[:, 10:70]).to_dict()["top_k"] for clf in (old, new))
    assert grey_old != grey_new
    assert all(row["top_k"] == grey_old and row["totals"]["reloads"] == 0 for row in rows[:6])
    assert all(row["top_k"] == grey_new and row["totals"]["reloads"] == 1 for row in rows[6:])
    # Every frame was collected (below 1.01): each index line names the version that guessed it.
    index = [json.loads(line) for line in (tmp_path / "unsure" / INDEX).read_text().splitlines()]
    new_id = model_file_id(bundled.default_model())
    assert old_id != new_id and [r["frame"] for r in index] == list(range(9))
    assert [r["model_sha256"] for r in index] == [old_id] * 6 + [new_id] * 3
    refusal = next(line for line in logged if "refused" in line)
    assert refusal.startswith(f"reload: {watched} refused, the running model stays: ")


def test_api_latest_says_why_a_reload_was_refused(tiny_model):
    pytest.importorskip("aiohttp", reason="needs the serve extra")
    import http.client

    from runtime.camera import loop as camera_loop
    from runtime.web import ServeConfig, WebServer

    clf = Classifier(tiny_model, provider="cpu", threads=1)

    def get(server, path):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())

    with WebServer(clf, ServeConfig(port=0), live=True) as server:
        server.publish(next(camera_loop.classify_stream(ListSource([frame(GREY_BGR)]), clf)))
        latest = get(server, "/api/latest")
        assert latest["model"] == tiny_model.name and latest["reload_error"] is None
        server.refused("model.onnx: not an ONNX model")
        assert get(server, "/api/latest")["reload_error"] == "model.onnx: not an ONNX model"
        fresh = Classifier(bundled.default_model(), provider="cpu", threads=1)
        server.use(fresh)
        latest = get(server, "/api/latest")
        assert latest["model"] == fresh.model_path.name and latest["reload_error"] is None
        assert get(server, "/api/info")["model"] == fresh.describe()


@pytest.mark.parametrize("args, message", [
    (["--camera", "0", "--reload"], "--reload watches the --model FILE"),
    (["photo.jpg", "--reload"], "--reload goes with --camera SRC"),
])
def test_cli_reload_needs_a_camera_and_a_model_file(args, message, tiny_model):
    extra = [] if "--camera" in args else ["--model", str(tiny_model)]
    r = CliRunner().invoke(cifar_run, [*args, *extra])
    assert r.exit_code == 2 and message in r.stderr
