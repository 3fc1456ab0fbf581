"""``WebServer``: the page, the MJPEG stream and the JSON API over a Classifier, on the
standard library's ThreadingHTTPServer (one daemon thread per connection).

Routes (every error is JSON ``{"error": message}`` with its status):
  GET  /                 the page: live view (with a camera) and upload
  GET  /stream.mjpg      multipart/x-mixed-replace JPEGs (503 at the viewer cap, 404 without camera)
  GET  /api/latest       the newest prediction (503 before the first frame, 404 without camera)
  GET  /api/info         the model, the limits, whether a camera is live
  POST /api/classify     image(s) -> prediction(s): 400 empty/malformed, 411 no length,
                         413 too large, 415 not an image
  GET  /static/app.js, /static/app.css
"""

from __future__ import annotations

import json
import socket
import socketserver
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Callable
from urllib.parse import urlsplit

from runtime.errors import CifarEdgeError
from runtime.web import pages, uploads
from runtime.web.auth import Access, display_urls
from runtime.web.config import ServeConfig
from runtime.web.stream import FrameHub, TooManyViewers
from runtime.web.uploads import RequestError

if TYPE_CHECKING:
    from runtime.camera.loop import FrameResult
    from runtime.model.classifier import Classifier

# A strict policy: nothing but this server's own files; pictures also from blob: (a file the
# page shows before uploading it) and data: (thumbnails on the no-JavaScript results page).
CSP = ("default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = (("X-Content-Type-Options", "nosniff"), ("Content-Security-Policy", CSP),
                    ("X-Frame-Options", "DENY"), ("Referrer-Policy", "no-referrer"),
                    ("Cross-Origin-Resource-Policy", "same-origin"))
BOUNDARY = "cifar-edge-frame"
CLIENT_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)
UPLOAD_SLOTS = 2  # uploads classified at once; more wait, so the camera loop keeps its CPU
DRAIN_S, DRAIN_BYTES = 5.0, 100 * 2**20  # s, bytes: at most this much of a refused upload is read


class ServeError(CifarEdgeError):
    """The server cannot start: the address is taken, not this machine's, or not allowed."""


class _App:
    """What every request handler shares: the classifier, the rule, the hub, the files."""

    def __init__(self, classifier: "Classifier", config: ServeConfig, access: Access,
                 hub: FrameHub | None, log: Callable[[str], None]):
        self.classifier, self.config, self.access, self.hub, self.log = classifier, config, access, hub, log
        self.index = pages.index_page(live=hub is not None)
        self.static = pages.load_static()
        self.upload_slots = threading.BoundedSemaphore(UPLOAD_SLOTS)
        self.info = {"model": classifier.describe(), "classes": list(classifier.class_names),
                     "top_k": classifier.top_k, "live": hub is not None,
                     "max_upload_bytes": config.max_upload_bytes, "max_files": config.max_files}


class _Handler(BaseHTTPRequestHandler):
    server: "_HTTPServer"
    protocol_version = "HTTP/1.1"  # keep-alive: the page polls /api/latest on one connection
    server_version = "cifar-edge"

    def version_string(self) -> str:
        return self.server_version  # no Python version in the Server header

    def setup(self) -> None:
        self.timeout = self.server.app.config.client_timeout_s
        self.cookie: str | None = None
        self.unread_body = 0  # bytes of a refused upload still on their way
        super().setup()

    # -- dispatch ---------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    ROUTES = {"/": {"GET": "_page"}, "/stream.mjpg": {"GET": "_stream"},
              "/api/latest": {"GET": "_latest"}, "/api/info": {"GET": "_info"},
              "/api/classify": {"POST": "_classify"},
              **{route: {"GET": "_static"} for route in pages.STATIC_FILES}}

    def _dispatch(self) -> None:
        app = self.server.app
        url = urlsplit(self.path)
        self.unread_body = self._declared_length()
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self.close_connection = True  # never read: the connection cannot carry another request
        try:
            verdict = app.access.check(self.headers, url.query)
            if not verdict.ok:
                return self._error(verdict.status, verdict.message,
                                   [("WWW-Authenticate", "Bearer")] if verdict.status == 401 else [])
            self.cookie = verdict.set_cookie
            methods = self.ROUTES.get(url.path)
            if methods is None:
                return self._error(HTTPStatus.NOT_FOUND, f"no such page: {url.path}")
            method = "GET" if self.command == "HEAD" and "GET" in methods else self.command
            if method not in methods:
                allowed = ", ".join(list(methods) + (["HEAD"] if "GET" in methods else []))
                return self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not allowed on "
                                   f"{url.path} (use {allowed})", [("Allow", allowed)])
            getattr(self, methods[method])(url.path)
        except RequestError as exc:
            self._error(exc.status, str(exc))
        except CLIENT_GONE:
            self.close_connection = True  # the client went away: nothing to answer
            return
        except Exception as exc:  # a bug: one line in the log, a 500 to the client
            app.log(f"error serving {self.command} {url.path}: {type(exc).__name__}: {exc}")
            try:
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {type(exc).__name__}")
            except CLIENT_GONE:
                self.close_connection = True
                return
        if self.unread_body:
            self._discard_unread_body()

    def _declared_length(self) -> int:
        value = (self.headers.get("Content-Length") or "0").strip()
        return int(value) if value.isdigit() else 0

    # -- responses --------------------------------------------------------------------------

    def _head(self, status: int, content_type: str, length: int | None, extra=()) -> None:
        self.send_response(status)
        for name, value in (*SECURITY_HEADERS, *extra):
            self.send_header(name, value)
        if self.cookie:
            self.send_header("Set-Cookie", self.cookie)
        self.send_header("Content-Type", content_type)
        if length is None or self.close_connection:
            self.send_header("Connection", "close")
            self.close_connection = True
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def _send(self, status: int, body: bytes, content_type: str, extra=()) -> None:
        self._head(status, content_type, len(body), extra)
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data, extra=()) -> None:
        self._send(status, json.dumps(data).encode("utf-8"), "application/json", extra)

    def _error(self, status: int, message: str, extra=()) -> None:
        if self.unread_body:
            self.close_connection = True  # the body is read only a little, if at all
        self._json(status, {"error": message, "status": int(status)}, extra)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (malformed request line, header too long, ...) as JSON."""
        self.close_connection = True
        self.cookie = None
        self._error(code, message or HTTPStatus(code).phrase)

    def log_message(self, format: str, *args) -> None:
        pass  # no line per request: the page polls several times a second

    # -- routes -----------------------------------------------------------------------------

    def _page(self, _path: str) -> None:
        self._send(200, self.server.app.index, pages.HTML, [("Cache-Control", "no-cache")])

    def _static(self, path: str) -> None:
        body, kind = self.server.app.static[path]
        self._send(200, body, kind, [("Cache-Control", "no-cache")])

    def _info(self, _path: str) -> None:
        self._json(200, self.server.app.info)

    def _hub(self) -> FrameHub:
        hub = self.server.app.hub
        if hub is None:
            raise RequestError(HTTPStatus.NOT_FOUND, "no camera: this server classifies uploads "
                               "only (POST /api/classify); cifar-run --camera SRC --serve streams")
        return hub

    def _latest(self, _path: str) -> None:
        latest = self._hub().latest()
        if latest is None:
            return self._error(HTTPStatus.SERVICE_UNAVAILABLE, "no frame classified yet",
                               [("Retry-After", "1")])
        self._json(200, latest, [("Cache-Control", "no-cache")])

    def _stream(self, _path: str) -> None:
        hub = self._hub()
        try:
            with hub.viewer() as seen:
                self._head(200, f"multipart/x-mixed-replace; boundary={BOUNDARY}", None,
                           [("Cache-Control", "no-cache, no-store, private"), ("Pragma", "no-cache"),
                            ("Age", "0")])
                if self.command == "HEAD":
                    return
                self.server.app.log(f"stream: viewer {self.client_address[0]} joined")
                while not hub.closed:
                    got = hub.next_jpeg(seen, timeout_s=0.5)
                    if got is None:
                        continue  # no new frame yet (or closing): look again
                    seen, jpeg = got
                    self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                     f"{len(jpeg)}\r\n\r\n".encode("ascii") + jpeg + b"\r\n")
        except TooManyViewers as exc:
            raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE, f"{exc}; close one and reload") from None
        except CLIENT_GONE:
            self.server.app.log(f"stream: viewer {self.client_address[0]} left")
            raise

    def _content_length(self) -> int:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "chunked uploads are not accepted: "
                               "send a Content-Length")
        value = self.headers.get("Content-Length")
        if value is None:
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
        if not value.strip().isdigit():
            raise RequestError(HTTPStatus.BAD_REQUEST, f"bad Content-Length {value!r}")
        length, limit = int(value), self.server.app.config.max_upload_bytes
        if length > limit:
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"{length:,} bytes is over the "
                               f"upload limit of {limit:,} bytes ({limit / 2**20:.0f} MB)")
        return length

    def _discard_unread_body(self) -> None:
        """Read what is left of a body that was not used (a refused upload), for a little
        while, so that a client that sends its whole body before reading (a browser's form,
        urllib) sees the answer rather than a reset connection."""
        deadline = time.monotonic() + DRAIN_S
        left, self.unread_body = self.unread_body, 0
        if left > DRAIN_BYTES:
            self.close_connection = True
            left = DRAIN_BYTES
        try:
            self.connection.settimeout(DRAIN_S)
            while left > 0 and time.monotonic() < deadline:
                chunk = self.rfile.read1(min(left, 65536))
                if not chunk:
                    break
                left -= len(chunk)
            self.connection.settimeout(self.timeout)
        except (OSError, ValueError):
            left = 1  # gone or slow
        if left > 0:
            self.close_connection = True

    def handle_expect_100(self) -> bool:
        """``Expect: 100-continue`` (curl, for large bodies): refuse a body over the limit
        before the client sends it."""
        if self.command == "POST":
            try:
                self._content_length()
            except RequestError as exc:
                self.close_connection = True  # the body, if sent anyway, stays unread
                self._error(exc.status, str(exc))
                return False
        return super().handle_expect_100()

    def _classify(self, _path: str) -> None:
        app = self.server.app
        length = self._content_length()
        body = self.rfile.read(length)
        self.unread_body = 0
        if len(body) < length:
            self.close_connection = True
            raise RequestError(HTTPStatus.BAD_REQUEST, f"body ended after {len(body)} of {length} bytes")
        found = uploads.read_uploads(self.headers.get("Content-Type", ""), body, app.config.max_files)
        as_html = _prefers_html(self.headers.get("Accept", ""))
        if not app.upload_slots.acquire(timeout=app.config.client_timeout_s):
            raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE, "busy classifying other uploads")
        try:
            results = uploads.classify_uploads(app.classifier, found, thumbnails=as_html)
        finally:
            app.upload_slots.release()
        failed = [r for r in results if "error" in r]
        status = failed[0]["status"] if len(failed) == len(results) else 200
        if as_html:
            return self._send(status, pages.results_page(results), pages.HTML)
        if len(results) == 1:  # one image in, one prediction (or error) out
            return self._json(status, results[0])
        self._json(status, {"results": results})


def _prefers_html(accept: str) -> bool:
    """A browser's own form submission (Accept: text/html, ...), not fetch() or curl."""
    return "text/html" in accept.lower()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # restart at once on the same port (TIME_WAIT sockets)

    def __init__(self, address: tuple[str, int], app_factory: Callable[[int], _App], max_connections: int):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.max_connections = max_connections
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._lock = threading.Lock()
        super().__init__(address, _Handler)
        self.app = app_factory(self.server_address[1])

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can hang for seconds on a
        # device without DNS; nothing here uses it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def process_request(self, request, client_address) -> None:
        with self._lock:
            if len(self._connections) >= self.max_connections:
                self.shutdown_request(request)  # over the cap: refused, nothing read
                return
            thread = threading.Thread(target=self._serve_connection, args=(request, client_address),
                                      name=f"http:{client_address[0]}", daemon=True)
            self._connections[request] = thread
        thread.start()

    def _serve_connection(self, request, client_address) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._connections.pop(request, None)

    def handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        if not isinstance(exc, CLIENT_GONE):
            self.app.log(f"connection from {client_address[0]}: {type(exc).__name__}: {exc}")

    def close_connections(self, timeout_s: float) -> int:
        """Shut every open connection and join its thread; returns how many did not end."""
        with self._lock:
            open_now = dict(self._connections)
        for sock in open_now:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + timeout_s
        for thread in open_now.values():
            thread.join(max(0.0, deadline - time.monotonic()))
        return sum(t.is_alive() for t in open_now.values())


class WebServer:
    """Serve ``classifier`` over HTTP; ``live=True`` adds the stream and /api/latest, fed by
    ``publish`` from the camera loop.

    >>> with WebServer(clf, ServeConfig(port=8000), live=True, log=print) as server:
    ...     for result in loop.classify_stream(source, clf):
    ...         server.publish(result)
    """

    def __init__(self, classifier: "Classifier", config: ServeConfig | None = None, *,
                 live: bool = False, log: Callable[[str], None] = lambda _m: None):
        config = config or ServeConfig()
        self.classifier, self.config, self.log = classifier, config, log
        self.hub = FrameHub(max_viewers=config.max_stream_clients, max_fps=config.stream_max_fps,
                            max_side=config.stream_max_side, quality=config.jpeg_quality,
                            log=log) if live else None
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "WebServer":
        """Bind, then serve on a background thread; logs the URL(s) to open."""
        config = self.config
        try:
            self._httpd = _HTTPServer((config.host, config.port), self._make_app, config.max_connections)
        except OSError as exc:
            raise ServeError(f"cannot serve on {config.host}:{config.port}: {exc.strerror or exc} "
                             "(another server on that port? pick another one)") from None
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.25},
                                        name="http-server", daemon=True)
        self._thread.start()
        if self.hub is not None:
            self.hub.start()
        self._log_start()
        return self

    def _make_app(self, port: int) -> _App:
        return _App(self.classifier, self.config, Access.for_config(self.config, port), self.hub, self.log)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def token(self) -> str | None:
        return self._httpd.app.access.token

    @property
    def urls(self) -> list[str]:
        return display_urls(self.config.host, self.port, self.token)

    def _log_start(self) -> None:
        urls = self.urls
        self.log(f"serving on {self.config.host}:{self.port}: open {urls[0]}"
                 + "".join(f" or {u}" for u in urls[1:]))
        if self.config.loopback:
            self.log(f"only this machine can connect; from another: ssh -L {self.port}:localhost:"
                     f"{self.port} USER@THIS-HOST, then open http://localhost:{self.port}/")
        elif self.token is None:
            self.log("WARNING: --no-auth on a network address: anyone who can reach this machine "
                     "sees the camera and can use the API")

    def publish(self, result: "FrameResult") -> None:
        """Hand the camera loop's newest result to the viewers and /api/latest (never waits)."""
        if self.hub is not None:
            self.hub.publish(result)

    def close(self) -> None:
        """Stop serving: viewers and the encoder end, open connections are shut, every thread
        joined (at most a few seconds)."""
        if self.hub is not None:
            self.hub.close()
        if self._httpd is None:
            return
        self._httpd.shutdown()  # returns once serve_forever has stopped accepting
        stuck = self._httpd.close_connections(timeout_s=3.0)
        self._httpd.server_close()
        self._thread.join(timeout=3.0)
        if stuck:
            self.log(f"{stuck} connection(s) did not end in time; left to exit with the process")
        self._httpd = None

    def __enter__(self) -> "WebServer":
        return self.start() if self._httpd is None else self

    def __exit__(self, *exc) -> None:
        self.close()
