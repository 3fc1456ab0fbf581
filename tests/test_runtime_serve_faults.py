"""runtime.web against hostile and unlucky clients, over real HTTP on loopback: the decode
budget, cross-site posts, strict framing, capacity, slow clients, body deadlines, the memory
for bodies, and a stop with an upload under way. Small and fast: limits are configured small;
the full-size probes and their figures are scripts/load_fault_serve.py's (docs/running.md)."""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("aiohttp", reason="needs the serve extra: pip install -e '.[serve]'")

from PIL import Image  # noqa: E402

from helpers import REPO  # noqa: E402
from runtime.model.classifier import Classifier  # noqa: E402
from runtime.web import ServeConfig, WebServer  # noqa: E402


@pytest.fixture(scope="module")
def clf(tiny_model):
    return Classifier(tiny_model, provider="cpu", threads=1)


def image_bytes(mode="RGB", size=(40, 30), fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, (255, 0, 0, 255)[:len(mode)] if mode != "L" else 128).save(buffer, format=fmt)
    return buffer.getvalue()


def post(port: int, body: bytes, headers: dict | None = None, timeout_s: float = 20):
    """(status, headers, JSON body) of a POST /api/classify."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("POST", "/api/classify", body, {"Content-Type": "image/png", **(headers or {})})
        response = conn.getresponse()
        return response.status, response.headers, json.loads(response.read())
    finally:
        conn.close()


def raw(port: int, data: bytes, timeout_s: float = 10) -> bytes:
    """What the server answers ``data``, sent as it is (the first 4 kB)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(data)
        return sock.recv(4096)


def head(port: int, length: int, content_type: str = "image/png") -> bytes:
    return (f"POST /api/classify HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


# -- bounded work per request -----------------------------------------------------------------------

def test_an_image_too_costly_to_decode_is_refused_from_its_header(clf):
    with WebServer(clf, ServeConfig(port=0, max_decode_bytes=2 * 2**20)) as server:
        rgba = image_bytes("RGBA", (1000, 1000))  # 12 bytes a pixel to decode and convert: 11 MB
        started = time.perf_counter()
        status, _, data = post(server.port, rgba)
        assert status == 413 and "1000x1000 RGBA takes about 11 MB" in data["error"] and data["status"] == 413
        assert time.perf_counter() - started < 1
        # A large JPEG is decoded reduced (draft mode), so it fits where its full size would not.
        status, _, data = post(server.port, image_bytes("RGB", (3000, 2000), "JPEG"), {"Content-Type": "image/jpeg"})
        assert status == 200 and (data["width"], data["height"]) == (3000, 2000)
        assert post(server.port, image_bytes())[0] == 200


def test_multipart_with_a_huge_part_header_is_refused_at_once(clf):
    disposition = f'form-data; name="image"; filename="{"; " * 100_000}.png"'
    body = (f"--b\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + image_bytes() + b"\r\n--b--\r\n")
    with WebServer(clf, ServeConfig(port=0)) as server:
        started = time.perf_counter()
        status, _, data = post(server.port, body, {"Content-Type": "multipart/form-data; boundary=b"})
    assert status == 400 and "malformed multipart body" in data["error"]
    assert time.perf_counter() - started < 1


def test_bodies_wait_for_memory_then_get_a_503(clf):
    """Bodies held at once are bounded: one that does not fit waits for another to end, and
    gets a fast 503 when that takes longer than client_timeout_s."""
    png = image_bytes(size=(200, 200))
    config = ServeConfig(port=0, upload_memory_bytes=len(png) + 10, client_timeout_s=1.0)
    with WebServer(clf, config) as server, socket.create_connection(("127.0.0.1", server.port)) as holder:
        holder.sendall(head(server.port, len(png)) + png[:100])  # holds the whole budget, half sent
        time.sleep(0.2)
        started = time.perf_counter()
        status, headers, data = post(server.port, png)
        assert status == 503 and "memory" in data["error"] and headers["Retry-After"]
        assert 0.8 < time.perf_counter() - started < 3
        answer = {}
        thread = threading.Thread(target=lambda: answer.update(got=post(server.port, png)))
        thread.start()  # waits for the holder's memory ...
        time.sleep(0.3)
        holder.sendall(png[100:])  # ... which comes free once the holder is answered
        assert status_of(holder.recv(4096)) == 200
        thread.join(10)
        assert answer["got"][0] == 200


def test_a_body_that_does_not_arrive_in_time_gets_a_408(clf):
    with WebServer(clf, ServeConfig(port=0, body_timeout_s=0.5)) as server:
        started = time.perf_counter()
        answer = raw(server.port, head(server.port, 1000) + b"x" * 10)
        assert status_of(answer) == 408 and b"did not arrive within" in answer
        assert time.perf_counter() - started < 3


# -- cross-site requests and framing ---------------------------------------------------------------

def test_a_post_from_another_site_is_refused_on_loopback_too(clf):
    with WebServer(clf, ServeConfig(port=0)) as server:
        own = f"http://127.0.0.1:{server.port}"
        for headers in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                        {"Sec-Fetch-Site": "same-site"}, {"Origin": "null"},
                        {"Origin": f"http://127.0.0.1:{server.port + 1}"}):
            status, _, data = post(server.port, image_bytes(), headers)
            assert status == 403 and "another site" in data["error"], headers
        for headers in ({}, {"Origin": own, "Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"}):
            assert post(server.port, image_bytes(), headers)[0] == 200, headers  # the page, a script
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", "/api/info", headers={"Origin": "http://evil.example"})
        assert conn.getresponse().status == 200  # reading changes nothing (and CORS keeps it from the page)
        conn.close()


@pytest.mark.parametrize("lengths", [[b"2", b"2"], [b"2", b"9"], [b"\xb2"], [b"\xc2\xb2"], [b"+2"]])
def test_a_doubled_or_non_ascii_content_length_is_a_400(clf, lengths):
    with WebServer(clf, ServeConfig(port=0)) as server:
        data = (b"POST /api/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                + b"".join(b"Content-Length: " + v + b"\r\n" for v in lengths) + b"\r\nab")
        assert status_of(raw(server.port, data)) == 400
        assert post(server.port, image_bytes())[0] == 200  # the server is none the worse


# -- slow and many clients ---------------------------------------------------------------------------

def test_beyond_capacity_a_fast_503_not_a_reset(clf):
    with WebServer(clf, ServeConfig(port=0, max_connections=2)) as server:
        idle = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=10) for _ in range(2)]
        for conn in idle:  # two keep-alive connections, open and idle: the capacity
            conn.request("GET", "/api/info")
            conn.getresponse().read()
        started = time.perf_counter()
        status, headers, data = post(server.port, image_bytes())
        assert status == 503 and "connections are open" in data["error"] and headers["Retry-After"] == "1"
        assert time.perf_counter() - started < 1
        for conn in idle:
            conn.close()
        time.sleep(0.2)
        assert post(server.port, image_bytes())[0] == 200


def test_slow_clients_are_dropped_and_never_starve_a_normal_one(clf):
    """Sockets that send their headers a byte at a time are closed at the header deadline,
    however they keep sending; a normal request meanwhile is answered at once."""
    with WebServer(clf, ServeConfig(port=0, header_timeout_s=1.0)) as server:
        slow = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(20)]
        for sock in slow:
            sock.sendall(b"POST /api/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        started = time.perf_counter()
        assert post(server.port, image_bytes(), timeout_s=5)[0] == 200
        assert time.perf_counter() - started < 1
        dropped_at = []
        while len(dropped_at) < len(slow) and time.perf_counter() - started < 5:
            for sock in slow:
                try:
                    sock.send(b"a")
                except OSError:
                    if sock not in [s for s, _ in dropped_at]:
                        dropped_at.append((sock, time.perf_counter() - started))
            time.sleep(0.2)
        for sock in slow:
            sock.close()
    assert len(dropped_at) == len(slow) and max(t for _, t in dropped_at) < 4


# -- a stop with uploads under way -----------------------------------------------------------------

def test_close_answers_an_upload_that_never_finishes_with_a_503(clf):
    png = image_bytes(size=(300, 300))
    server = WebServer(clf, ServeConfig(port=0, stop_grace_s=0.5)).start()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head(server.port, len(png)) + png[:50])
        time.sleep(0.2)
        started = time.perf_counter()
        server.close()
        assert time.perf_counter() - started < 5
        answer = sock.recv(4096)
    assert status_of(answer) == 503 and b"stopping" in answer


def test_sigterm_answers_the_upload_under_way(tiny_model):
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli.serve", "--model", str(tiny_model), "--port", "0"],
                            stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        port = next(int(line.split("127.0.0.1:")[2].split("/")[0]) for line in proc.stderr if "open http" in line)
        png = image_bytes(size=(600, 400))
        with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
            sock.sendall(head(port, len(png)) + png[: len(png) // 2])
            time.sleep(0.3)
            proc.send_signal(signal.SIGTERM)  # half the body sent
            time.sleep(0.3)
            sock.sendall(png[len(png) // 2:])
            answer = sock.recv(4096)
        assert status_of(answer) == 200 and b'"label"' in answer
        assert proc.wait(20) == 130
        assert "stopped by SIGTERM" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
