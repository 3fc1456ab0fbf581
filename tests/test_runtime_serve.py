"""runtime.web, cifar-serve and cifar-run --serve over real HTTP on loopback: the page, the
MJPEG stream, /api/latest, uploads good and bad, the token rule, clients that vanish, and a
clean shutdown. No OpenCV: frames come from a fake source (tests/test_runtime_serve_video.py
runs a real video file)."""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

pytest.importorskip("aiohttp", reason="needs the serve extra: pip install -e '.[serve]'")

from runtime.camera import live as camera_live  # noqa: E402  (after the skip: the server needs aiohttp)
from runtime.camera import loop as camera_loop  # noqa: E402
from runtime.cli.run import main as cifar_run  # noqa: E402
from runtime.cli.serve import main as cifar_serve  # noqa: E402
from runtime.model.classifier import Classifier  # noqa: E402
from runtime.web import ServeConfig, WebServer  # noqa: E402
from runtime.web.auth import Access  # noqa: E402
from runtime.web.stream import FrameHub  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RED_BGR = (0, 0, 255)


class FakeCamera:
    """Red frames every ``interval_s`` until ``done`` is set (then None: the source ends)."""

    name = "fake"
    live = False

    def __init__(self, interval_s: float = 0.01, size=(160, 120)):
        self.interval_s, self.size = interval_s, size
        self.done = threading.Event()
        self.released = False

    def read(self):
        if self.done.wait(self.interval_s):
            return None
        frame = np.zeros((self.size[1], self.size[0], 3), np.uint8)
        frame[...] = RED_BGR
        return frame

    def release(self):
        self.released = True


@pytest.fixture(scope="module")
def clf(tiny_model):
    return Classifier(tiny_model, provider="cpu", threads=1)


def feed(server: WebServer, clf, camera: FakeCamera) -> threading.Thread:
    """The camera loop on a thread: classify the fake camera's frames and publish them."""
    def loop():
        for result in camera_loop.classify_stream(camera, clf):
            server.publish(result)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def live(clf):
    """A live server on a free loopback port, fed red frames; yields (server, camera)."""
    camera = FakeCamera()
    with WebServer(clf, ServeConfig(port=0), live=True) as server:
        loop = feed(server, clf, camera)
        yield server, camera
        camera.done.set()
        loop.join(5)


@pytest.fixture
def uploads_only(clf):
    with WebServer(clf, ServeConfig(port=0)) as server:
        yield server


def request(server, method, path, body=None, headers=None, port=None):
    """(status, headers, body) of one request to ``server`` on 127.0.0.1."""
    conn = http.client.HTTPConnection("127.0.0.1", port or server.port, timeout=20)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def get_json(server, path, **kwargs):
    status, headers, body = request(server, "GET", path, **kwargs)
    assert headers["Content-Type"] == "application/json", body
    return status, json.loads(body)


def png(color=(255, 0, 0), size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def multipart(*files: tuple[str, str, bytes], boundary="testboundary") -> tuple[bytes, dict]:
    """A multipart/form-data body of (field, filename, data) parts."""
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"'
                    f"\r\nContent-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n"
                    for field, name, data in files) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def post_image(server, body: bytes, content_type="image/png", **headers):
    status, response_headers, data = request(server, "POST", "/api/classify", body,
                                             {"Content-Type": content_type, **headers})
    return status, json.loads(data)


def read_frames(response, n: int) -> list[bytes]:
    """The next ``n`` JPEGs of a multipart/x-mixed-replace response."""
    frames = []
    while len(frames) < n:
        assert response.readline() == b"--cifar-edge-frame\r\n"
        part_headers = {}
        while (line := response.readline()) != b"\r\n":
            name, _, value = line.decode().partition(":")
            part_headers[name.lower()] = value.strip()
        assert part_headers["content-type"] == "image/jpeg"
        frames.append(response.read(int(part_headers["content-length"])))
        assert response.read(2) == b"\r\n"
    return frames


def open_stream(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    conn.request("GET", "/stream.mjpg")
    return conn, conn.getresponse()


def close_stream(conn, response):
    response.close()  # the response holds the socket too
    conn.close()


def wait_for(condition, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# -- the page ------------------------------------------------------------------------------------

def test_page_has_the_live_view_and_the_upload_with_stable_ids(live):
    server, _ = live
    status, headers, body = request(server, "GET", "/")
    page = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    for element_id in ("stream", "live-label", "live-confidence", "live-topk", "live-fps",
                       "live-frame", "upload-form", "upload-input", "drop-zone", "results"):
        assert f'id="{element_id}"' in page
    assert 'name="image"' in page and "multiple" in page and 'enctype="multipart/form-data"' in page
    assert "<script>" not in page and "style=" not in page  # nothing inline: the CSP forbids it
    assert headers["X-Content-Type-Options"] == "nosniff"
    csp = headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "img-src 'self' blob: data:" in csp and "unsafe" not in csp
    assert headers["Server"] == "cifar-edge"
    for path, kind in (("/static/app.js", "text/javascript"), ("/static/app.css", "text/css")):
        status, headers, body = request(server, "GET", path)
        assert status == 200 and headers["Content-Type"].startswith(kind) and body


def test_upload_only_page_has_no_stream(uploads_only):
    status, _, body = request(uploads_only, "GET", "/")
    assert status == 200 and 'id="upload-form"' in body.decode() and "stream.mjpg" not in body.decode()
    for path in ("/stream.mjpg", "/api/latest"):
        status, data = get_json(uploads_only, path)
        assert status == 404 and "no camera" in data["error"]
    status, info = get_json(uploads_only, "/api/info")
    assert status == 200 and info["live"] is False and info["max_upload_bytes"] == 20 * 2**20


@pytest.mark.parametrize("path", ["/../pyproject.toml", "/static/../config.py", "/static/index.html",
                                  "/runtime/web/static/app.js", "/%2e%2e/pyproject.toml"])
def test_no_file_outside_the_allow_list(uploads_only, path):
    status, data = get_json(uploads_only, path)
    assert status == 404 and data["error"].startswith("no such page")


def test_head_and_wrong_methods(uploads_only):
    status, headers, body = request(uploads_only, "HEAD", "/")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
    for method, path, allow in (("GET", "/api/classify", "POST"), ("POST", "/", "GET, HEAD"),
                                ("DELETE", "/api/info", "GET, HEAD"), ("PUT", "/api/classify", "POST")):
        status, headers, body = request(uploads_only, method, path)
        assert status == 405 and headers["Allow"] == allow and "not allowed" in json.loads(body)["error"]


def test_keep_alive_survives_requests_with_unused_bodies(uploads_only):
    conn = http.client.HTTPConnection("127.0.0.1", uploads_only.port, timeout=20)
    try:
        for _ in range(2):  # one connection, several requests: the page's polling
            conn.request("GET", "/api/info")
            response = conn.getresponse()
            assert response.status == 200 and response.getheader("Connection") is None
            response.read()
        conn.request("POST", "/nowhere", body=b"x" * 5000, headers={"Content-Type": "image/png"})
        response = conn.getresponse()
        assert response.status == 404 and response.getheader("Connection") == "close"
        response.read()
    finally:
        conn.close()


# -- the stream and /api/latest ---------------------------------------------------------------------

def test_stream_sends_valid_jpegs(live):
    server, _ = live
    conn, response = open_stream(server)
    try:
        assert response.status == 200
        assert response.headers["Content-Type"] == "multipart/x-mixed-replace; boundary=cifar-edge-frame"
        assert "no-cache" in response.headers["Cache-Control"]
        frames = read_frames(response, 3)
    finally:
        close_stream(conn, response)
    for jpeg in frames:
        image = Image.open(io.BytesIO(jpeg))
        assert image.format == "JPEG" and image.size == (160, 120)
        image.load()
        r, g, b = image.getpixel((140, 110))  # outside the overlay: the red frame, in RGB
        assert r > 200 and g < 60 and b < 60


def test_api_latest(live):
    server, _ = live
    wait_for(lambda: request(server, "GET", "/api/latest")[0] == 200)
    status, latest = get_json(server, "/api/latest")
    assert status == 200 and latest["label"] == "airplane" and 0.5 < latest["confidence"] <= 1
    assert {"label", "confidence", "top_k", "frame", "time", "fps", "classify_ms", "ort_ms"} <= set(latest)
    assert latest["top_k"][0] == {"label": "airplane", "probability": latest["confidence"]}
    assert abs(latest["time"] - time.time()) < 10
    wait_for(lambda: get_json(server, "/api/latest")[1]["frame"] > latest["frame"])


def test_api_latest_before_the_first_frame(clf):
    with WebServer(clf, ServeConfig(port=0), live=True) as server:
        status, headers, body = request(server, "GET", "/api/latest")
    assert status == 503 and headers["Retry-After"] == "1" and "no frame" in json.loads(body)["error"]


def test_each_frame_is_encoded_once_for_all_viewers(clf, monkeypatch):
    from runtime.web import stream

    encoded = []
    real = stream.render_jpeg
    monkeypatch.setattr(stream, "render_jpeg", lambda *a: encoded.append(1) or real(*a))
    hub = FrameHub(max_viewers=4, max_fps=0, max_side=640, quality=70)
    hub.start()
    results = list(camera_loop.classify_stream(FakeCamera(0.0), clf, max_frames=5))
    got: dict[str, list[bytes]] = {"a": [], "b": []}
    try:
        with hub.viewer() as seen_a, hub.viewer() as seen_b:
            seen = {"a": seen_a, "b": seen_b}
            for result in results:
                hub.publish(result)
                for name in got:
                    seen[name], jpeg = hub.next_jpeg(seen[name], timeout_s=5)
                    got[name].append(jpeg)
    finally:
        hub.close()
    assert len(encoded) == len(results) == 5  # one encode per frame, two viewers
    assert all(a is b for a, b in zip(got["a"], got["b"]))  # the very same bytes object
    assert not hub._encoder.is_alive()


def test_no_encoding_while_nobody_watches(clf, monkeypatch):
    from runtime.web import stream

    encoded = []
    monkeypatch.setattr(stream, "render_jpeg", lambda *a: encoded.append(1) or b"jpeg")
    hub = FrameHub(max_viewers=1, max_fps=0, max_side=640, quality=70)
    hub.start()
    for result in camera_loop.classify_stream(FakeCamera(0.0), clf, max_frames=20):
        hub.publish(result)
    time.sleep(0.1)
    assert encoded == [] and hub.latest()["frame"] == 19
    with hub.viewer() as seen:
        assert hub.next_jpeg(seen, timeout_s=5) == (1, b"jpeg")  # the newest frame, at once
    hub.close()


def test_viewer_cap(clf):
    camera = FakeCamera()
    with WebServer(clf, ServeConfig(port=0, max_stream_clients=1), live=True) as server:
        feed(server, clf, camera)
        conn, response = open_stream(server)
        try:
            read_frames(response, 1)
            status, data = get_json(server, "/stream.mjpg")
            assert status == 503 and "1 viewers" in data["error"]
        finally:
            close_stream(conn, response)
        camera.done.set()


def test_a_vanished_viewer_stalls_neither_the_loop_nor_the_others(live):
    server, _ = live
    steady_conn, steady = open_stream(server)
    # One viewer resets its connection mid-stream, another stops reading altogether.
    gone = socket.create_connection(("127.0.0.1", server.port))
    gone.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert gone.recv(64).startswith(b"HTTP/1.1 200")
    gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    gone.close()  # RST: the server's next write fails with ConnectionReset/BrokenPipe
    stalled = socket.create_connection(("127.0.0.1", server.port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: localhost\r\n\r\n")
    try:
        wait_for(lambda: request(server, "GET", "/api/latest")[0] == 200)
        first = get_json(server, "/api/latest")[1]["frame"]
        read_frames(steady, 20)  # the steady viewer keeps getting frames
        wait_for(lambda: get_json(server, "/api/latest")[1]["frame"] > first + 20)  # the loop runs on
        wait_for(lambda: server.hub._viewers == 2)  # the reset one was let go
    finally:
        close_stream(steady_conn, steady)
        stalled.close()
    wait_for(lambda: server.hub._viewers == 0)


def test_close_ends_viewers_idle_connections_and_threads(clf):
    camera = FakeCamera()
    server = WebServer(clf, ServeConfig(port=0), live=True).start()
    loop = feed(server, clf, camera)
    conn, response = open_stream(server)
    read_frames(response, 1)
    idle = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    idle.request("GET", "/api/info")
    idle.getresponse().read()  # keep-alive: the connection stays open, idle
    started = time.monotonic()
    server.close()
    assert time.monotonic() - started < 5
    response.read()  # returns: the server ended the stream (a hang would time out)
    names = [t.name for t in threading.enumerate()]
    assert not [n for n in names if n.startswith(("http", "mjpeg"))], names
    camera.done.set()
    loop.join(5)
    conn.close()
    idle.close()


# -- uploads ---------------------------------------------------------------------------------------

def test_upload_raw_and_multipart(uploads_only):
    status, result = post_image(uploads_only, png((255, 0, 0)))
    assert status == 200 and result["label"] == "airplane" and len(result["top_k"]) == 3
    assert (result["width"], result["height"]) == (40, 30)
    # curl --data-binary @file labels the body as a form; it is one image all the same.
    assert post_image(uploads_only, png(), "application/x-www-form-urlencoded")[0] == 200
    body, headers = multipart(("image", "blue.png", png((0, 0, 255))))
    status, result = post_image(uploads_only, body, headers["Content-Type"])
    assert status == 200 and result["name"] == "blue.png" and result["label"] == "bird"


def test_several_files_at_once_with_one_bad(uploads_only):
    body, headers = multipart(("image", "red.png", png((255, 0, 0))), ("note", "x.txt", b"ignored"),
                              ("image", "notes.txt", b"hello"), ("image", "blue.png", png((0, 0, 255))))
    status, data = post_image(uploads_only, body, headers["Content-Type"])
    assert status == 200
    assert [r["name"] for r in data["results"]] == ["red.png", "notes.txt", "blue.png"]
    assert data["results"][0]["label"] == "airplane" and data["results"][2]["label"] == "bird"
    assert data["results"][1]["status"] == 415 and "not an image" in data["results"][1]["error"]


def test_a_phone_photo_large_and_exif_rotated(uploads_only, clf, tmp_path):
    """A 12 Mpx JPEG stored landscape with EXIF orientation 6 (shown portrait): decoded in
    memory exactly as cifar-run decodes the same file."""
    rng = np.random.default_rng(0)
    blocks = np.kron(rng.integers(0, 256, (30, 40, 3)), np.ones((100, 100, 1)))
    pixels = np.clip(blocks + rng.normal(0, 12, blocks.shape), 0, 255).astype(np.uint8)  # sensor noise
    image = Image.fromarray(pixels)  # 4000 x 3000
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    image.save(path, format="JPEG", quality=92, exif=exif)
    assert 1_000_000 < path.stat().st_size < 20 * 2**20
    body, headers = multipart(("image", "phone.jpg", path.read_bytes()))
    status, result = post_image(uploads_only, body, headers["Content-Type"])
    assert status == 200 and (result["width"], result["height"]) == (3000, 4000)
    expected = clf.predict(path)
    assert result["label"] == expected.label
    assert result["confidence"] == pytest.approx(expected.confidence, abs=1e-6)


def truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()[:200]


def huge_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (10_000, 6_000)).save(buffer, format="PNG")  # 60 Mpx, a few kB
    return buffer.getvalue()


@pytest.mark.parametrize("body, content_type, status, message", [
    (b"", "image/png", 400, "empty request"),
    (b"hello", "text/plain", 415, "not an image"),
    (b"hello, not a picture", "image/jpeg", 415, "not an image"),
    (b"%PDF-1.4 ...", "application/octet-stream", 415, "not an image"),
    ("truncated", "image/jpeg", 400, "corrupt or truncated"),
    ("huge", "image/png", 413, "pixel limit"),
    (b"--x\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nvalue\r\n--x--\r\n",
     "multipart/form-data; boundary=x", 400, "no file in the multipart field 'image'"),
    (b"--x\r\nContent-Disposition: form-data; name=\"image\"; filename=\"\"\r\n\r\n\r\n--x--\r\n",
     "multipart/form-data; boundary=x", 400, "no file in the multipart field"),
    (b"garbage without parts", "multipart/form-data; boundary=x", 400, "malformed multipart"),
    (b"--x\r\n", "multipart/form-data", 400, "without a boundary"),
])
def test_bad_uploads(uploads_only, body, content_type, status, message):
    body = {"truncated": truncated_jpeg, "huge": huge_png}.get(body, lambda: body)()
    got_status, data = post_image(uploads_only, body, content_type)
    assert got_status == status and message in data["error"] and data["status"] == status


def test_empty_file_in_a_form(uploads_only):
    body, headers = multipart(("image", "empty.jpg", b""))
    status, data = post_image(uploads_only, body, headers["Content-Type"])
    assert status == 400 and "empty.jpg: empty file" in data["error"]


def test_upload_size_limit(clf):
    with WebServer(clf, ServeConfig(port=0, max_upload_bytes=1000)) as server:
        status, data = post_image(server, png(size=(400, 400)) + b"\0" * 2000)
        assert status == 413 and "upload limit of 1,000 bytes" in data["error"]
        # Refused from the headers alone: nothing of the body is needed.
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"POST /api/classify HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/png\r\n"
                         b"Content-Length: 999999999\r\nExpect: 100-continue\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 413")
        status, headers, body = request(server, "POST", "/api/classify", None,
                                        {"Content-Type": "image/png", "Transfer-Encoding": "chunked"})
        assert status == 411
        assert post_image(server, png())[0] == 200  # a small one still passes


def test_a_form_without_javascript_gets_a_results_page(uploads_only):
    body, headers = multipart(("image", "red.png", png((255, 0, 0))), ("image", "bad.txt", b"text"))
    status, response_headers, page = request(uploads_only, "POST", "/api/classify", body,
                                             {**headers, "Accept": "text/html,application/xhtml+xml"})
    page = page.decode()
    assert status == 200 and response_headers["Content-Type"].startswith("text/html")
    assert "Content-Security-Policy" in response_headers
    assert re.search(r'class="result-label">airplane<', page)
    assert 'src="data:image/jpeg;base64,' in page and 'data-state="error"' in page
    assert 'href="/"' in page


def test_a_file_name_cannot_inject_markup(uploads_only):
    body, headers = multipart(("image", "<script>alert(1)</script>.png", png()))
    _, _, page = request(uploads_only, "POST", "/api/classify", body, {**headers, "Accept": "text/html"})
    assert b"<script>" not in page and b"&lt;script&gt;" in page


# -- who may connect -------------------------------------------------------------------------------

def test_token_rule_on_a_network_address(clf):
    logged = []
    with WebServer(clf, ServeConfig(host="0.0.0.0", port=0), log=logged.append) as server:
        token = server.token
        assert token and len(token) >= 32
        assert any(f"?token={token}" in line for line in logged)
        status, headers, body = request(server, "GET", "/api/info")
        assert status == 401 and headers["WWW-Authenticate"] == "Bearer" and "token" in json.loads(body)["error"]
        assert request(server, "GET", "/api/info?token=wrong-token")[0] == 401
        assert request(server, "GET", "/api/info", headers={"Authorization": "Bearer nope"})[0] == 401
        assert request(server, "GET", "/api/info", headers={"Authorization": f"Bearer {token}"})[0] == 200
        status, headers, _ = request(server, "GET", f"/?token={token}")
        cookie = headers["Set-Cookie"]
        assert status == 200 and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        name_value = cookie.split(";")[0]
        assert request(server, "GET", "/api/info", headers={"Cookie": name_value})[0] == 200
        assert request(server, "POST", "/api/classify", png(),
                       {"Content-Type": "image/png", "Cookie": name_value})[0] == 200
        assert request(server, "POST", "/api/classify", png(), {"Content-Type": "image/png"})[0] == 401


def test_token_on_loopback_only_when_given(clf):
    with WebServer(clf, ServeConfig(port=0, token="s3cret-token")) as server:
        assert request(server, "GET", "/api/info")[0] == 401
        assert request(server, "GET", "/api/info?token=s3cret-token")[0] == 200
    with WebServer(clf, ServeConfig(port=0)) as server:
        assert server.token is None
        assert request(server, "GET", "/api/info")[0] == 200
        # A web page that points its own host name at 127.0.0.1 (DNS rebinding) is refused.
        status, _, body = request(server, "GET", "/api/info", headers={"Host": "evil.example:80"})
        assert status == 403 and "not this machine" in json.loads(body)["error"]
        for host in ("localhost:1", "127.0.0.1", "[::1]:8000"):
            assert request(server, "GET", "/api/info", headers={"Host": host})[0] == 200


def test_no_auth_on_a_network_address_warns(clf):
    logged = []
    with WebServer(clf, ServeConfig(host="0.0.0.0", port=0, auth=False), log=logged.append) as server:
        assert server.token is None and request(server, "GET", "/api/info")[0] == 200
    assert any("WARNING" in line and "--no-auth" in line for line in logged)


def test_access_rule_without_a_server():
    assert Access.for_config(ServeConfig(host="::1"), 1).token is None
    assert Access.for_config(ServeConfig(host="192.168.1.5"), 1).token is not None
    assert Access.for_config(ServeConfig(host="pi.local"), 1).token is not None  # a name may be public
    assert Access.for_config(ServeConfig(host="0.0.0.0", token="given-token"), 1).token == "given-token"


# -- the commands ----------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--serve", "8000"], "cifar-serve"),
    (["--camera", "x", "--serve", "abc"], "[HOST:]PORT"),
    (["--camera", "x", "--serve", "::1:80"], "brackets"),
    (["--camera", "x", "--token", "abcdefgh"], "go with --serve"),
])
def test_cifar_run_serve_usage_errors(args, message):
    result = CliRunner().invoke(cifar_run, args)
    assert result.exit_code == 2 and message in result.output


@pytest.mark.parametrize("args, message", [
    (["--token", "short"], "at least 8"),
    (["--token", "long-enough", "--no-auth"], "contradict"),
])
def test_cifar_serve_bad_options(args, message, bundled_assets):
    result = CliRunner().invoke(cifar_serve, args)
    assert result.exit_code == 2 and message in result.stderr


def test_cifar_serve_port_in_use_is_one_line(bundled_assets):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cifar_serve, ["--port", str(port)])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1].startswith(f"cifar-serve: error: cannot serve on 127.0.0.1:{port}")


def test_cifar_run_camera_serve_in_process(tiny_model, monkeypatch):
    """cifar-run --camera SRC --serve: the loop prints as usual while the page serves; the
    server ends with the loop."""
    from runtime import web

    camera = FakeCamera()
    monkeypatch.setattr(camera_live, "open_source", lambda spec, **_: camera)
    servers = []
    real_start = web.WebServer.start
    monkeypatch.setattr(web.WebServer, "start", lambda self: servers.append(self) or real_start(self))
    seen = {}

    def client():
        wait_for(lambda: servers and servers[0]._httpd is not None)
        server = servers[0]
        wait_for(lambda: request(server, "GET", "/api/latest")[0] == 200)
        seen["latest"] = get_json(server, "/api/latest")[1]
        conn, response = open_stream(server)
        seen["frames"] = read_frames(response, 2)
        close_stream(conn, response)
        seen["upload"] = post_image(server, png((0, 0, 255)))
        camera.done.set()  # the "video file" ends: cifar-run finishes

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    result = CliRunner().invoke(cifar_run, ["--camera", "fake.mp4", "--model", str(tiny_model),
                                            "--headless", "--serve", "127.0.0.1:0"])
    thread.join(10)
    assert result.exit_code == 0, result.output
    assert "serving on 127.0.0.1:" in result.stderr and result.stdout.startswith("frame")
    assert seen["latest"]["label"] == "airplane" and len(seen["frames"]) == 2
    assert seen["upload"][0] == 200 and seen["upload"][1]["label"] == "bird"
    assert camera.released and servers[0]._httpd is None


CIFAR_RUN = "from runtime.cli.run import main; main()"


def start_serving(*args: str, script: str = CIFAR_RUN):
    """cifar-run (or ``script``) in a child process, serving on a free port: (process, port)."""
    proc = subprocess.Popen([sys.executable, "-c", script, *args],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
    while True:
        line = proc.stderr.readline()
        if not line:
            proc.kill()
            pytest.fail(f"ended before serving: {proc.communicate()}")
        if (m := re.search(r"open http://127\.0\.0\.1:(\d+)/", line)):
            return proc, int(m[1])


def watch_then_terminate(proc, port: int, frames: int = 2) -> tuple[list[bytes], str]:
    """Read ``frames`` stream frames, send SIGTERM while watching; (the frames, stderr)."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        conn.request("GET", "/stream.mjpg")
        response = conn.getresponse()
        got = read_frames(response, frames)  # a viewer is watching when the signal comes
        proc.terminate()
        _, stderr = proc.communicate(timeout=20)
        response.read()  # returns: the stream ended instead of hanging
        close_stream(conn, response)
    finally:
        if proc.poll() is None:
            proc.kill()
    return got, stderr


SERVE_SCRIPT = """
import sys, threading, numpy as np
from runtime.camera import live
from runtime.cli.run import main

class Camera:
    name, live = "fake", True
    def read(self):
        threading.Event().wait(0.02)
        return np.full((120, 160, 3), (0, 0, 255), np.uint8)
    def release(self):
        print("camera released", file=sys.stderr, flush=True)

live.open_source = lambda spec, **_: Camera()
main()
"""


def test_sigterm_stops_the_server_and_the_camera_cleanly(tiny_model):
    proc, port = start_serving("--camera", "fake", "--model", str(tiny_model), "--headless",
                               "--every", "5", "--serve", "127.0.0.1:0", script=SERVE_SCRIPT)
    _, stderr = watch_then_terminate(proc, port)
    assert proc.returncode == 130, stderr
    assert "camera released" in stderr and "stopped by SIGTERM" in stderr
    assert "Traceback" not in stderr and "did not end" not in stderr


def test_cifar_serve_until_sigterm(tiny_model):
    proc, port = start_serving("--model", str(tiny_model), "--port", "0",
                               script="from runtime.cli.serve import main; main()")
    try:
        status, info = get_json(None, "/api/info", port=port)
        assert status == 200 and info["live"] is False and "tiny_contract.onnx" in info["model"]
        status, _, body = request(None, "POST", "/api/classify", png(), {"Content-Type": "image/png"}, port=port)
        assert status == 200 and json.loads(body)["label"] == "airplane"
        proc.terminate()
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "cifar-serve: stopped by SIGTERM" in stderr, stderr


def test_serving_loads_no_opencv(tiny_model):
    code = ("import sys\nfrom runtime.web import ServeConfig, WebServer\nfrom runtime.model.classifier import Classifier\n"
            f"s = WebServer(Classifier({str(tiny_model)!r}), ServeConfig(port=0), live=True).start()\n"
            "s.close()\nassert 'cv2' not in sys.modules, 'cv2 loaded'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr


def test_a_video_file_stands_in_for_the_camera(tiny_model, tmp_path):
    """The real thing, with OpenCV: a video file played at its own rate, served, saved, and
    stopped by SIGTERM with a viewer watching; the saved video is finished and playable."""
    cv2 = pytest.importorskip("cv2")
    clip, saved = tmp_path / "clip.mp4", tmp_path / "out.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (320, 240))
    for _ in range(300):  # 10 s
        writer.write(np.full((240, 320, 3), RED_BGR, np.uint8))
    writer.release()
    proc, port = start_serving("--camera", str(clip), "--model", str(tiny_model), "--headless",
                               "--realtime", "--every", "5", "--save", str(saved), "--serve", "127.0.0.1:0")
    wait_for(lambda: request(None, "GET", "/api/latest", port=port)[0] == 200)  # 503 until a frame
    status, latest = get_json(None, "/api/latest", port=port)
    assert status == 200 and latest["label"] == "airplane"
    frames, stderr = watch_then_terminate(proc, port, frames=3)
    assert proc.returncode == 130 and "stopped by SIGTERM" in stderr, stderr
    assert Image.open(io.BytesIO(frames[-1])).size == (320, 240)
    capture = cv2.VideoCapture(str(saved))
    assert capture.isOpened() and capture.read()[0]
    capture.release()
