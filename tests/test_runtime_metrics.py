"""/metrics (Prometheus text format) and ``--json``'s totals: parsed with prometheus_client's
own parser, the counters move as frames flow, the same token rule as the rest of the API."""

from __future__ import annotations

import http.client
import importlib.util
import json
import threading
import time

import pytest
from click.testing import CliRunner
from helpers import ListSource, solid_frame as frame

from runtime.camera import live
from runtime.camera import loop as camera_loop
from runtime.camera.metrics import LiveMetrics
from runtime.cli.run import main as cifar_run
from runtime.model.classifier import Classifier

prometheus = pytest.importorskip("prometheus_client.parser", reason="needs the dev extra")

GREY_BGR, RED_BGR = (128, 128, 128), (0, 0, 255)  # the tiny model: ~47% cat, ~95% airplane


def parse(text: str) -> dict:
    """{(sample name, frozenset of labels): value} from Prometheus text, via prometheus_client."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in prometheus.text_string_to_metric_families(text) for s in family.samples}


def sample(parsed: dict, name: str, **labels) -> float:
    return parsed[(f"cifar_edge_{name}", frozenset(labels.items()))]


@pytest.fixture(scope="module")
def clf(tiny_model):
    return Classifier(tiny_model, provider="cpu", threads=1)


def test_counters_move_as_frames_flow(clf):
    metrics = LiveMetrics(clf.class_names, 0.6, "tiny.onnx")
    before = parse(metrics.prometheus_text())
    assert sample(before, "frames_total") == 0 and sample(before, "predictions_total", label="cat") == 0
    frames = [frame(GREY_BGR), frame(RED_BGR), frame(RED_BGR), frame(GREY_BGR), frame(RED_BGR)]
    results = list(camera_loop.classify_stream(ListSource(frames), clf))
    for result in results[:2]:
        metrics.observe(result)
    middle = parse(metrics.prometheus_text())
    for result in results[2:]:
        metrics.observe(result, collected=result.prediction.confidence < 0.6)
    after = parse(metrics.prometheus_text())
    assert sample(middle, "frames_total") == 2 and sample(after, "frames_total") == 5
    assert sample(after, "predictions_total", label="cat") == 2
    assert sample(after, "predictions_total", label="airplane") == 3
    assert sum(v for (name, _), v in after.items() if name == "cifar_edge_predictions_total") == 5
    assert sample(after, "below_threshold_total") == 2 and sample(after, "below_threshold_ratio") == 0.4
    assert sample(after, "confidence_threshold") == 0.6 and sample(after, "collected_total") == 1
    assert sample(after, "reloads_total") == 0
    assert sample(after, "stage_seconds_count", stage="ort") == 5
    for stage, ms in (("read", "read_ms"), ("classify", "classify_ms"), ("ort", "ort_ms")):
        total = sum(getattr(r, ms) for r in results) / 1000.0
        assert sample(after, "stage_seconds_sum", stage=stage) == pytest.approx(total, abs=1e-5)
        assert sample(after, "stage_last_milliseconds", stage=stage) == pytest.approx(getattr(results[-1], ms),
                                                                                     abs=1e-3)
    assert sample(after, "stage_seconds_sum", stage="classify") > sample(middle, "stage_seconds_sum",
                                                                          stage="classify")
    assert sample(after, "fps") == pytest.approx(results[-1].fps, abs=1e-3)
    assert sample(after, "model_info", model="tiny.onnx") == 1
    assert metrics.totals() == {"frames": 5, "below_threshold": 2, "below_share": 0.4, "collected": 1,
                                "reloads": 0}


def test_label_values_are_escaped():
    metrics = LiveMetrics(['say "hi"\\now'], 0.5, "a\nb.onnx")
    parsed = parse(metrics.prometheus_text())
    assert sample(parsed, "predictions_total", label='say "hi"\\now') == 0
    assert sample(parsed, "model_info", model="a\nb.onnx") == 1


def test_json_lines_carry_the_totals(clf, monkeypatch):
    frames = [frame(GREY_BGR if i % 2 else RED_BGR) for i in range(6)]
    monkeypatch.setattr(live, "open_source", lambda *_a, **_k: ListSource(frames))
    r = CliRunner().invoke(cifar_run, ["--camera", "fake", "--model", str(clf.model_path), "--headless", "--json",
                                       "--min-confidence", "0.6"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["totals"]["frames"] for row in rows] == [1, 2, 3, 4, 5, 6]
    assert [row["totals"]["below_threshold"] for row in rows] == [0, 1, 1, 2, 2, 3]
    assert rows[-1]["totals"]["below_share"] == 0.5 and rows[-1]["totals"]["reloads"] == 0
    assert all(row["read_ms"] >= 0 for row in rows)


# -- over real HTTP ------------------------------------------------------------------------------

needs_server = pytest.mark.skipif(importlib.util.find_spec("aiohttp") is None,
                                  reason="needs the serve extra: pip install -e '.[serve]'")


def get(port: int, path: str, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read().decode("utf-8")
    finally:
        conn.close()


def wait_until(condition, limit_s: float = 20.0) -> None:
    """Poll ``condition`` (a bound on a hang, not a timing being tested)."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.01)


class SteppedSource(ListSource):
    """Delivers a frame each time the test allows one; None once ``done``."""

    def __init__(self):
        super().__init__([])
        self.allow, self.delivered, self.done = threading.Semaphore(0), threading.Semaphore(0), threading.Event()

    def read(self):
        self.allow.acquire()
        if self.done.is_set():
            return None
        self.delivered.release()
        return frame(GREY_BGR)


@needs_server
def test_metrics_over_http_move_with_the_frames_and_need_the_token(clf, monkeypatch):
    from runtime import web

    source = SteppedSource()
    monkeypatch.setattr(live, "open_source", lambda *_a, **_k: source)
    servers = []
    real_start = web.WebServer.start
    monkeypatch.setattr(web.WebServer, "start", lambda self: servers.append(self) or real_start(self))
    seen = {}

    def client():
        def scrape():
            return get(port, "/metrics", {"Authorization": "Bearer metrics-token-1234"})

        def frames_after(n):  # n more frames read; then wait until the loop has counted them
            for _ in range(n):
                source.allow.release()
                source.delivered.acquire()
            wait_until(lambda: sample(parse(scrape()[2]), "frames_total") >= target[0] + n)
            target[0] += n
            return parse(scrape()[2])

        target = [0]
        try:
            wait_until(lambda: servers and servers[0]._httpd is not None)
            port = servers[0].port
            seen["no token"] = get(port, "/metrics")[0]
            seen["before"] = scrape()
            seen["one"] = frames_after(1)
            seen["four"] = frames_after(3)
        finally:  # the "camera" ends, whatever happened: cifar-run returns
            source.done.set()
            source.allow.release()

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    r = CliRunner().invoke(cifar_run, ["--camera", "fake", "--model", str(clf.model_path), "--headless",
                                       "--serve", "127.0.0.1:0", "--token", "metrics-token-1234",
                                       "--min-confidence", "0.6"])
    thread.join(20)
    assert r.exit_code == 0, r.output
    assert seen["no token"] == 401
    status, headers, text = seen["before"]
    assert status == 200 and headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert sample(parse(text), "frames_total") == 0
    one, four = seen["one"], seen["four"]
    assert sample(one, "frames_total") == 1 and sample(four, "frames_total") == 4
    assert sample(four, "predictions_total", label="cat") == 4 and sample(four, "below_threshold_ratio") == 1.0
    assert sample(four, "stage_seconds_count", stage="classify") == 4
    assert sample(four, "stage_seconds_sum", stage="ort") > sample(one, "stage_seconds_sum", stage="ort") > 0


@needs_server
def test_metrics_without_a_camera_is_404(clf):
    from runtime.web import ServeConfig, WebServer

    with WebServer(clf, ServeConfig(port=0)) as server:
        status, _, body = get(server.port, "/metrics")
        assert status == 404 and "no camera" in json.loads(body)["error"]


@needs_server
def test_a_live_server_on_its_own_counts_what_it_is_given(clf):
    from runtime.web import ServeConfig, WebServer

    with WebServer(clf, ServeConfig(port=0), live=True) as server:
        for result in camera_loop.classify_stream(ListSource([frame(RED_BGR)] * 3), clf):
            server.publish(result)
        parsed = parse(get(server.port, "/metrics")[2])
        assert sample(parsed, "frames_total") == 3 and sample(parsed, "predictions_total", label="airplane") == 3
