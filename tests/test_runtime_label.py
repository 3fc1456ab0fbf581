"""Labelling in the browser over real HTTP on loopback: the frames --collect DIR kept are listed,
filed under DIR/labelled/<class>/ (whole, out of the index and the disk cap), skipped or deleted;
bad class names and traversal refused; the token and cross-site rules of the other routes; the
folder is one cifar-train reads."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from test_runtime_serve import SERVE_SCRIPT, request, start_serving, wait_for

pytest.importorskip("aiohttp", reason="needs the serve extra: pip install -e '.[serve]'")

from runtime.cli.serve import main as cifar_serve  # noqa: E402
from runtime.image.collect import INDEX, CollectOptions, Collector  # noqa: E402
from runtime.model.classifier import Classifier, Prediction  # noqa: E402
from runtime.web import ServeConfig, WebServer  # noqa: E402
from runtime.web import labels  # noqa: E402
from runtime.web.labels import LABELLED, LOG  # noqa: E402


def noise(seed: int) -> np.ndarray:
    """(60, 80, 3) uint8 BGR that JPEG cannot shrink much: ~10 KB."""
    return np.random.default_rng(seed).integers(0, 256, (60, 80, 3), dtype=np.uint8)


def guess(confidence: float) -> Prediction:
    return Prediction((("cat", confidence), ("dog", 1.0 - confidence)), np.array([confidence, 1 - confidence]))


def collect(folder: Path, n: int, **options) -> Collector:
    collector = Collector(CollectOptions(folder, every_s=0.0, **options), model="tiny.onnx")
    for i in range(n):
        collector.offer(guess(0.4), frame_bgr=noise(i), source="fake", frame=i)
    return collector


@pytest.fixture(scope="module")
def clf(tiny_model):
    return Classifier(tiny_model, provider="cpu", threads=1)


@pytest.fixture
def served(clf, tmp_path):
    collector = collect(tmp_path, 3)
    with WebServer(clf, ServeConfig(port=0), collector=collector) as server:
        yield server, collector, tmp_path


def listed(server) -> list[str]:
    status, _, body = request(server, "GET", "/api/collected")
    assert status == 200
    return [frame["file"] for frame in json.loads(body)["frames"]]


def post(server, wanted, **headers):
    body = wanted if isinstance(wanted, bytes) else json.dumps(wanted).encode()
    status, _, data = request(server, "POST", "/api/label", body, {"Content-Type": "application/json", **headers})
    answer = json.loads(data)
    assert set(answer) >= ({"error", "status"} if status != 200 else {"file"}), answer
    return status, answer


def test_the_page_and_a_listed_frame_with_the_models_guess(served):
    server, _, folder = served
    status, headers, page = request(server, "GET", "/label")
    assert status == 200 and b'<script src="/static/label.js" defer></script>' in page
    assert b"<script>" not in page and "script-src 'self'" in headers["Content-Security-Policy"]
    assert request(server, "GET", "/static/label.js")[0] == 200
    assert json.loads(request(server, "GET", "/api/info")[2])["labelling"] is True
    status, _, body = request(server, "GET", "/api/collected")
    frames = json.loads(body)["frames"]
    assert [f["file"] for f in frames] == sorted(p.name for p in folder.glob("*.jpg"))
    assert frames[0]["label"] == "cat" and frames[0]["confidence"] == pytest.approx(0.4)
    status, headers, jpeg = request(server, "GET", f"/collected/{frames[0]['file']}")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert jpeg == (folder / frames[0]["file"]).read_bytes()


def test_a_frame_labelled_lands_whole_in_its_class_folder_and_leaves_the_list(served):
    server, _, folder = served
    first, *rest = listed(server)
    original = (folder / first).read_bytes()
    status, answer = post(server, {"file": first, "label": "cat"})
    assert status == 200 and answer["path"] == f"{LABELLED}/cat/{first}"
    moved = folder / LABELLED / "cat" / first
    assert moved.read_bytes() == original and not (folder / first).exists()
    with Image.open(moved) as image:
        image.load()
    assert listed(server) == rest
    assert [json.loads(line)["file"] for line in (folder / INDEX).read_text().splitlines()] == rest
    log = [json.loads(line) for line in (folder / LABELLED / LOG).read_text().splitlines()]
    assert log[0]["file"] == first and log[0]["label"] == "cat" and log[0]["model"] == "tiny.onnx"
    assert post(server, {"file": first, "label": "cat"})[0] == 404  # once only
    assert request(server, "GET", f"/collected/{first}")[0] == 404
    status, _, body = request(server, "GET", "/api/collected")
    assert json.loads(body)["labelled"] == {"cat": 1}


def test_a_long_list_is_sent_in_part(clf, tmp_path, monkeypatch):
    monkeypatch.setattr(labels, "LISTED", 2)
    with WebServer(clf, ServeConfig(port=0), collector=collect(tmp_path, 3)) as server:
        status, _, body = request(server, "GET", "/api/collected")
    listing = json.loads(body)
    assert len(listing["frames"]) == 2 and listing["total"] == 3


def test_a_new_class_skip_and_delete(served):
    server, _, folder = served
    a, b, c = listed(server)
    assert post(server, {"file": a, "label": "coffee mug"})[0] == 200
    assert (folder / LABELLED / "coffee mug" / a).is_file()
    assert post(server, {"file": b, "action": "skip"})[0] == 200
    assert listed(server) == [c, b]  # skipped ones last, still there
    assert post(server, {"file": c, "action": "delete"})[0] == 200
    assert not (folder / c).exists() and listed(server) == [b]
    assert post(server, {"file": b, "action": "explode"})[0] == 400


@pytest.mark.parametrize("label", ["", "../x", "a/b", "a\\b", ".hidden", "..", "x" * 65, "train", "Test",
                                   "a\x00b", "end ", " start", 7, None, "a.b"])
def test_bad_class_names_are_refused(served, label):
    server, _, folder = served
    first = listed(server)[0]
    status, answer = post(server, {"file": first, "label": label})
    assert status == 400 and "class name" in answer["error"] and "\n" not in answer["error"]
    assert (folder / first).is_file() and first in listed(server)
    assert not (folder / LABELLED).exists() or not any((folder / LABELLED).iterdir())


@pytest.mark.parametrize("body", [b"not json", b"[1]", b'{"label": "cat"}', b'{"file": "../index.jsonl", "label": "cat"}'])
def test_bad_bodies_are_refused(served, body):
    server = served[0]
    assert post(server, body)[0] in (400, 404)


@pytest.mark.parametrize("path", ["/collected/../index.jsonl", "/collected/%2e%2e%2findex.jsonl",
                                  "/collected/index.jsonl", "/collected/..%2F..%2Fetc%2Fpasswd",
                                  "/collected/%2Fetc%2Fpasswd", "/collected/", "/collected/nope.jpg",
                                  "/collected/labelled%2Fcat%2Fx.jpg", "/collected/.secret.jpg"])
def test_no_file_outside_the_listed_frames_is_served(served, path):
    server, _, folder = served
    (folder / ".secret.jpg").write_bytes(b"not listed")
    status, _, body = request(server, "GET", path)
    assert status in (400, 404) and b"root:" not in body and b"not listed" not in body


def test_a_listed_name_that_became_a_link_out_of_the_folder_is_not_served(served, tmp_path_factory):
    server, _, folder = served
    first = listed(server)[0]
    outside = tmp_path_factory.mktemp("outside") / "secret.jpg"
    outside.write_bytes(b"secret")
    (folder / first).unlink()
    (folder / first).symlink_to(outside)
    status, _, body = request(server, "GET", f"/collected/{first}")
    assert status == 404 and body != b"secret"


def test_cross_site_posts_are_refused(served):
    server, _, folder = served
    first = listed(server)[0]
    assert post(server, {"file": first, "label": "cat"}, **{"Sec-Fetch-Site": "cross-site"})[0] == 403
    assert post(server, {"file": first, "label": "cat"}, Origin="http://evil.example")[0] == 403
    assert (folder / first).is_file()
    assert request(server, "GET", "/api/label")[0] == 405


def test_token_required_on_a_network_address(clf, tmp_path):
    collector = collect(tmp_path, 1)
    with WebServer(clf, ServeConfig(host="0.0.0.0", port=0), collector=collector) as server:
        name = collector.pending()[0]["file"]
        for method, path in (("GET", "/label"), ("GET", "/api/collected"), ("GET", f"/collected/{name}"),
                             ("POST", "/api/label")):
            assert request(server, method, path, b"{}" if method == "POST" else None)[0] == 401
        bearer = {"Authorization": f"Bearer {server.token}"}
        assert request(server, "GET", f"/collected/{name}", headers=bearer)[0] == 200
        assert post(server, {"file": name, "label": "cat"}, **bearer)[0] == 200


def test_without_collect_there_is_nothing_to_label(clf):
    with WebServer(clf, ServeConfig(port=0)) as server:
        assert request(server, "GET", "/label")[0] == 404
        assert request(server, "GET", "/api/collected")[0] == 404
        assert json.loads(request(server, "GET", "/api/info")[2])["labelling"] is False


def test_a_labelled_frame_is_neither_counted_nor_pruned_by_the_cap(served):
    server, collector, folder = served
    first = listed(server)[0]
    size = (folder / first).stat().st_size
    before = collector.bytes_on_disk
    post(server, {"file": first, "label": "dog"})
    assert collector.bytes_on_disk < before - size + 1  # its bytes and its line are gone
    small = Collector(CollectOptions(folder, every_s=0.0, max_bytes=3 * size), model="tiny.onnx")
    for i in range(10, 20):
        small.offer(guess(0.3), frame_bgr=noise(i))
    assert (folder / LABELLED / "dog" / first).is_file()
    assert small.bytes_on_disk <= 3 * size and first not in {f["file"] for f in small.pending()}


def test_the_labelled_folder_is_what_cifar_train_reads(served):
    pytest.importorskip("train.data")
    from train.data import load_dataset  # cifar-train's own loader; no TensorFlow

    server, collector, folder = served
    for i in range(3, 5):  # two more frames come from the camera while the page is open
        collector.offer(guess(0.4), frame_bgr=noise(i))
    names = listed(server)
    assert len(names) == 5
    for name, label in zip(names, ["cat", "new class", "cat", "new class", "cat"]):
        assert post(server, {"file": name, "label": label})[0] == 200
    data = load_dataset(folder / LABELLED, cache_dir=folder / ".cache", quiet=True)  # labels.jsonl: no class
    assert data.class_names == ("cat", "new class") and data.split["layout"] == "flat"
    assert len(data.x_train) + len(data.x_test) == 5 and data.x_train.shape[1:] == (32, 32, 3)
    # Each class has a file to test and one to train (the names carry the time: which, varies).
    assert set(data.y_test.tolist()) == {0, 1} and set(data.y_train.tolist()) == {0, 1}


def test_cifar_serve_needs_an_existing_collect_folder(tiny_model, tmp_path):
    result = CliRunner().invoke(cifar_serve, ["--model", str(tiny_model), "--collect", str(tmp_path / "nope"),
                                              "--port", "0"])
    assert result.exit_code == 2 and "does not exist" in result.output


def label_over_http(proc, port: int, folder: Path, label: str) -> str:
    """Label the first listed frame of the child server on ``port``; its name. Ends the child."""
    try:
        wait_for(lambda: request(None, "GET", "/api/collected", port=port)[0] == 200
                 and json.loads(request(None, "GET", "/api/collected", port=port)[2])["frames"])
        name = json.loads(request(None, "GET", "/api/collected", port=port)[2])["frames"][0]["file"]
        status, _, body = request(None, "POST", "/api/label", json.dumps({"file": name, "label": label}),
                                  {"Content-Type": "application/json"}, port=port)
        assert status == 200, body
        proc.terminate()
        proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (folder / LABELLED / label / name).is_file()
    return name


def test_cifar_serve_labels_a_folder_collected_earlier(tiny_model, tmp_path):
    collect(tmp_path, 2)
    proc, port = start_serving("--model", str(tiny_model), "--port", "0", "--collect", str(tmp_path),
                               script="from runtime.cli.serve import main; main()")
    name = label_over_http(proc, port, tmp_path, "teapot")
    assert name not in (tmp_path / INDEX).read_text()


def test_cifar_run_collects_and_serves_the_label_page(tiny_model, tmp_path):
    proc, port = start_serving("--camera", "fake", "--model", str(tiny_model), "--headless", "--every", "5",
                               "--serve", "127.0.0.1:0", "--collect", str(tmp_path), "--collect-below", "1",
                               "--collect-every", "0.2", script=SERVE_SCRIPT)
    name = label_over_http(proc, port, tmp_path, "airplane")
    assert name not in (tmp_path / INDEX).read_text()


def test_cifar_serve_is_refused_a_folder_a_running_cifar_run_collects_into(tiny_model, tmp_path):
    proc, port = start_serving("--camera", "fake", "--model", str(tiny_model), "--headless", "--every", "5",
                               "--serve", "127.0.0.1:0", "--collect", str(tmp_path), "--collect-below", "1",
                               "--collect-every", "0.2", script=SERVE_SCRIPT)
    try:
        result = CliRunner().invoke(cifar_serve, ["--model", str(tiny_model), "--collect", str(tmp_path),
                                                  "--port", "0"])
        assert result.exit_code != 0 and "Traceback" not in result.output
        assert f"--collect {tmp_path}: in use by pid {proc.pid}; one cifar-run or cifar-serve per folder" \
            in result.stderr
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
    Collector(CollectOptions(tmp_path), model="tiny.onnx", exclusive=True).close()  # the child gone, it is free


def test_a_large_body_is_refused_and_a_slow_one_read_whole(served):
    server, _, folder = served
    first = listed(server)[0]
    assert post(server, b"{" + b" " * 5000 + b"}")[0] == 413
    body = json.dumps({"file": first, "label": "cat"}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(b"POST /api/label HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:10])
        time.sleep(0.3)  # the rest comes later, as from a slow network
        sock.sendall(body[10:])
        answer = b"".join(iter(lambda: sock.recv(65536), b""))
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert (folder / LABELLED / "cat" / first).is_file()
