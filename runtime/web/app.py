"""The HTTP application on aiohttp: who may ask, the routes, and every answer.

Routes (every error is JSON ``{"error": message, "status": code}`` with its status):
  GET  /                 the page: live view (with a camera) and upload
  GET  /stream.mjpg      multipart/x-mixed-replace JPEGs (503 at the viewer cap, 404 without camera)
  GET  /api/latest       the newest prediction (503 before the first frame, 404 without camera)
  GET  /api/info         the model, the limits, whether a camera is live, whether /label is
                         served
  GET  /metrics          the camera loop's counters, Prometheus text format (404 without camera)
  POST /api/classify     image(s) -> prediction(s): 400 empty/malformed, 403 from another site,
                         408 too slow, 411 no length, 413 too large, 415 not an image, 503 busy
  GET  /label            the label page: the frames --collect DIR kept (404 without --collect)
  GET  /api/collected    those frames as JSON, and how many are filed under each class
  GET  /collected/NAME   one of those JPEGs (only a name DIR's index lists, only from DIR)
  POST /api/label        {"file", "label"} files a frame under DIR/labelled/<label>/;
                         {"file", "action": "skip"|"delete"}: 400 bad name, 403 from another site
  GET  /static/app.js, /static/app.css, /static/label.js

One handler takes every path and method and looks them up in ROUTES, so a path outside that
list is 404 and a method outside it 405 with ``Allow``, whatever aiohttp's router would say.
aiohttp itself answers malformed HTTP (a Content-Length that is not digits or comes twice, a
header line over 8 KB) with a plain-text 400 before any of this runs.
"""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import TYPE_CHECKING, Callable

from aiohttp import HttpVersion11, web

from runtime.camera.metrics import CONTENT_TYPE
from runtime.web import bodies, pages, uploads
from runtime.web.auth import Access, same_origin
from runtime.web.config import ServeConfig
from runtime.web.labels import Labeller
from runtime.web.stream import FrameHub, TooManyViewers
from runtime.web.uploads import RequestError

if TYPE_CHECKING:
    from runtime.camera.metrics import LiveMetrics
    from runtime.image.collect import Collector
    from runtime.model.classifier import Classifier

# A strict policy: nothing but this server's own files; pictures also from blob: (a file the
# page shows before uploading it) and data: (thumbnails on the no-JavaScript results page).
CSP = ("default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = (("X-Content-Type-Options", "nosniff"), ("Content-Security-Policy", CSP),
                    ("X-Frame-Options", "DENY"), ("Referrer-Policy", "no-referrer"),
                    ("Cross-Origin-Resource-Policy", "same-origin"))
BOUNDARY = "cifar-edge-frame"
UPLOAD_SLOTS = 2  # uploads classified at once; more wait, so the camera loop keeps its CPU
# Where a request keeps the Set-Cookie its token asked for (aiohttp 3.13 types these keys).
LABEL_BODY_BYTES = 4096  # a POST /api/label body: one small JSON object
COLLECTED = "/collected/"  # + a JPEG's name: the one route with a name in its path
COOKIE = web.RequestKey("cookie", str) if hasattr(web, "RequestKey") else "cookie"
ROUTES = {"/": {"GET": "page"}, "/stream.mjpg": {"GET": "stream"}, "/api/latest": {"GET": "latest"},
          "/metrics": {"GET": "metrics"},
          "/api/info": {"GET": "info"}, "/api/classify": {"POST": "classify"},
          "/label": {"GET": "label_page"}, "/api/collected": {"GET": "collected"},
          "/api/label": {"POST": "label"},
          **{route: {"GET": "static"} for route in pages.STATIC_FILES}}


class ByteBudget:
    """Bytes of request bodies held at once: ``take`` waits until there is room."""

    def __init__(self, total: int):
        self.total, self.free = total, total
        self._changed = asyncio.Condition()

    async def take(self, n: int) -> int:
        n = min(n, self.total)  # one body larger than the whole budget still gets in, alone
        async with self._changed:
            await self._changed.wait_for(lambda: self.free >= n)
            self.free -= n
        return n

    async def give(self, n: int) -> None:
        async with self._changed:
            self.free += n
            self._changed.notify_all()


class Shared:
    """What every request shares: the classifier, the rules, the hub, the files, the limits.
    Made on the server's event loop (its asyncio primitives belong to it)."""

    def __init__(self, classifier: "Classifier", config: ServeConfig, access: Access, hub: FrameHub | None,
                 log: Callable[[str], None], metrics: "LiveMetrics | None" = None,
                 collector: "Collector | None" = None):
        self.classifier, self.config, self.access, self.hub, self.log = classifier, config, access, hub, log
        self.metrics = metrics
        self.labeller = Labeller(collector) if collector is not None else None
        self.label_page = pages.label_page()
        self.index = pages.index_page(live=hub is not None)
        self.static = pages.load_static()
        self.use(classifier)
        self.budget = ByteBudget(config.upload_memory_bytes)
        self.stopping = asyncio.Event()  # set on close, after the grace: bodies still coming get a 503
        self.uploads_in_flight = 0
        self.connections: Callable[[], int] = lambda: 0  # open connections (the server sets it)
        self.classify_pool = ThreadPoolExecutor(UPLOAD_SLOTS, thread_name_prefix="http-classify")
        # A viewer waits for the next JPEG on the hub's Condition, one thread each, off the loop.
        self.viewer_pool = ThreadPoolExecutor(config.max_stream_clients, thread_name_prefix="http-viewer")

    def use(self, classifier: "Classifier") -> None:
        """Answer with ``classifier`` from now on (at start, and after a --reload)."""
        config = self.config
        self.info = {"model": classifier.describe(), "classes": list(classifier.class_names),
                     "top_k": classifier.top_k, "live": self.hub is not None,
                     "labelling": self.labeller is not None,
                     "max_upload_bytes": config.max_upload_bytes, "max_files": config.max_files}
        self.classifier = classifier

    def shutdown_pools(self) -> None:
        self.classify_pool.shutdown(wait=True, cancel_futures=True)
        self.viewer_pool.shutdown(wait=True, cancel_futures=True)


def make_app(shared: Shared) -> web.Application:
    handlers = _Handlers(shared)
    app = web.Application()
    app.router.add_route("*", "/{path:.*}", handlers.handle, expect_handler=handlers.expect)
    app.on_response_prepare.append(handlers.add_headers)
    return app


def _json(status: int, data, extra=()) -> web.Response:
    return _send(status, json.dumps(data).encode("utf-8"), "application/json", extra)


def _send(status: int, body: bytes, content_type: str, extra=()) -> web.Response:
    return web.Response(status=status, body=body, headers={"Content-Type": content_type, **dict(extra)})


def _error(request: web.BaseRequest, status: int, message: str, extra=()) -> web.Response:
    response = _json(status, {"error": message, "status": int(status)}, extra)
    if request.body_exists and not request.content.at_eof():
        response.force_close()  # the body is read only a little, if at all
    return response


def _prefers_html(accept: str) -> bool:
    """A browser's own form submission (Accept: text/html, ...), not fetch() or curl."""
    return "text/html" in accept.lower()


class _Handlers:
    def __init__(self, shared: Shared):
        self.shared = shared

    # -- dispatch ---------------------------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            return await getattr(self, self._admit(request))(request)
        except RequestError as exc:
            return _error(request, exc.status, str(exc), exc.headers)
        except ConnectionError:
            raise  # the client went away: aiohttp lets the connection go
        except Exception as exc:  # a bug: one line in the log, a 500 to the client
            self.shared.log(f"error serving {request.method} {request.path}: {type(exc).__name__}: {exc}")
            return _error(request, HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {type(exc).__name__}")

    def _admit(self, request: web.BaseRequest) -> str:
        """The name of the route's method, once the request may have it; else RequestError."""
        shared = self.shared
        if (open_now := shared.connections()) > shared.config.max_connections:
            raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE, f"{open_now} connections are open, over this "
                               f"server's {shared.config.max_connections}: try again in a moment",
                               (("Retry-After", "1"),))
        verdict = shared.access.check(request.headers, request.query_string)
        if not verdict.ok:
            raise RequestError(verdict.status, verdict.message,
                               (("WWW-Authenticate", "Bearer"),) if verdict.status == 401 else ())
        request[COOKIE] = verdict.set_cookie
        if not (cross := same_origin(request.method, request.headers)).ok:
            raise RequestError(cross.status, cross.message)
        methods = ROUTES.get(request.path) or (
            {"GET": "collected_jpeg"} if request.path.startswith(COLLECTED) else None)
        if methods is None:
            raise RequestError(HTTPStatus.NOT_FOUND, f"no such page: {request.path}")
        method = "GET" if request.method == "HEAD" and "GET" in methods else request.method
        if method not in methods:
            allowed = ", ".join(list(methods) + (["HEAD"] if "GET" in methods else []))
            raise RequestError(HTTPStatus.METHOD_NOT_ALLOWED, f"{request.method} is not allowed on "
                               f"{request.path} (use {allowed})", (("Allow", allowed),))
        if methods[method] in ("classify", "label"):
            bodies.declared_length(request, shared.config.max_upload_bytes if methods[method] == "classify"
                                   else LABEL_BODY_BYTES)
        return methods[method]

    async def expect(self, request: web.BaseRequest) -> web.StreamResponse | None:
        """``Expect: 100-continue`` (curl, for large bodies): refuse a request before the
        client sends its body, or invite the body."""
        if request.version != HttpVersion11:
            return None
        try:
            self._admit(request)
        except RequestError as exc:
            response = _error(request, exc.status, str(exc), exc.headers)
            response.force_close()
            return response
        if request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return None

    async def add_headers(self, request: web.BaseRequest, response: web.StreamResponse) -> None:
        response.headers["Server"] = "cifar-edge"  # no versions of Python or aiohttp
        for name, value in SECURITY_HEADERS:
            response.headers.setdefault(name, value)
        if request.get(COOKIE):
            response.headers["Set-Cookie"] = request[COOKIE]

    # -- routes -----------------------------------------------------------------------------

    async def page(self, _request) -> web.Response:
        return _send(200, self.shared.index, pages.HTML, [("Cache-Control", "no-cache")])

    async def static(self, request) -> web.Response:
        body, kind = self.shared.static[request.path]
        return _send(200, body, kind, [("Cache-Control", "no-cache")])

    async def info(self, _request) -> web.Response:
        return _json(200, self.shared.info)

    def _labeller(self) -> Labeller:
        if self.shared.labeller is None:
            raise RequestError(HTTPStatus.NOT_FOUND, "nothing to label: this server was started "
                               "without --collect DIR")
        return self.shared.labeller

    async def label_page(self, _request) -> web.Response:
        self._labeller()
        return _send(200, self.shared.label_page, pages.HTML, [("Cache-Control", "no-cache")])

    async def collected(self, _request) -> web.Response:
        listing = await asyncio.to_thread(self._labeller().listing)
        return _json(200, listing, [("Cache-Control", "no-cache")])

    async def collected_jpeg(self, request) -> web.Response:
        path = self._labeller().jpeg(request.path[len(COLLECTED):])
        try:
            body = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:  # labelled or pruned a moment ago
            raise RequestError(HTTPStatus.NOT_FOUND, "no such collected frame") from None
        return _send(200, body, "image/jpeg", [("Cache-Control", "no-cache")])

    async def label(self, request) -> web.Response:
        labeller = self._labeller()
        late = RequestError(HTTPStatus.REQUEST_TIMEOUT, f"the request did not arrive within "
                            f"{self.shared.config.body_timeout_s:.0f} s")
        raw = await self._within(request.read(), self.shared.config.body_timeout_s, late)  # <= LABEL_BODY_BYTES
        try:
            wanted = json.loads(raw)
        except ValueError:
            raise RequestError(HTTPStatus.BAD_REQUEST, "the body is not JSON: send "
                               '{"file": NAME, "label": CLASS}') from None
        return _json(200, await asyncio.to_thread(labeller.apply, wanted))

    def _hub(self) -> FrameHub:
        if self.shared.hub is None:
            raise RequestError(HTTPStatus.NOT_FOUND, "no camera: this server classifies uploads "
                               "only (POST /api/classify); cifar-run --camera SRC --serve streams")
        return self.shared.hub

    async def latest(self, _request) -> web.Response:
        latest = self._hub().latest()
        if latest is None:
            raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE, "no frame classified yet", (("Retry-After", "1"),))
        return _json(200, latest, [("Cache-Control", "no-cache")])

    async def metrics(self, _request) -> web.Response:
        self._hub()  # 404 without a camera
        text = self.shared.metrics.prometheus_text()
        return _send(200, text.encode("utf-8"), CONTENT_TYPE, [("Cache-Control", "no-cache")])

    async def stream(self, request: web.BaseRequest) -> web.StreamResponse:
        hub = self._hub()
        try:
            with hub.viewer() as seen:
                response = web.StreamResponse(headers={
                    "Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}",
                    "Cache-Control": "no-cache, no-store, private", "Pragma": "no-cache", "Age": "0"})
                response.force_close()  # the stream ends the connection
                await response.prepare(request)
                if request.method != "HEAD":
                    await self._send_frames(request, response, seen)
        except TooManyViewers as exc:
            raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE, f"{exc}; close one and reload") from None
        return response

    async def _send_frames(self, request: web.BaseRequest, response: web.StreamResponse, seen: int) -> None:
        """Each new JPEG of the hub to this viewer until the hub closes or the viewer leaves
        (or reads nothing for ``client_timeout_s``: its connection is dropped)."""
        shared, hub, loop = self.shared, self.shared.hub, asyncio.get_running_loop()
        who = request.remote
        shared.log(f"stream: viewer {who} joined")
        try:
            while not hub.closed:
                got = await loop.run_in_executor(shared.viewer_pool, hub.next_jpeg, seen, 0.5)
                if got is None:
                    continue  # no new frame yet (or closing): look again
                seen, jpeg = got
                part = (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                        .encode("ascii") + jpeg + b"\r\n")
                await asyncio.wait_for(response.write(part), shared.config.client_timeout_s)
        except (ConnectionError, asyncio.TimeoutError) as exc:
            shared.log(f"stream: viewer {who} left" + (" (read nothing in time)" if
                                                       isinstance(exc, asyncio.TimeoutError) else ""))
            if request.transport is not None:
                request.transport.close()

    async def classify(self, request: web.BaseRequest) -> web.Response:
        shared, config = self.shared, self.shared.config
        shared.uploads_in_flight += 1
        held = 0
        try:
            busy = RequestError(HTTPStatus.SERVICE_UNAVAILABLE, "busy: other uploads fill this server's memory "
                                "for them; try again in a moment", (("Retry-After", "2"),))
            held = await self._within(shared.budget.take(request.content_length), config.client_timeout_s, busy)
            late = RequestError(HTTPStatus.REQUEST_TIMEOUT, f"the upload did not arrive within "
                                f"{config.body_timeout_s:.0f} s")
            found = await self._within(bodies.read_uploads(request, config.max_files), config.body_timeout_s, late)
            as_html = _prefers_html(request.headers.get("Accept", ""))
            results = await self._classify(found, as_html)
        finally:
            shared.uploads_in_flight -= 1
            if held:
                await shared.budget.give(held)
        failed = [r for r in results if "error" in r]
        status = failed[0]["status"] if len(failed) == len(results) else 200
        if as_html:
            return _send(status, pages.results_page(results), pages.HTML)
        if len(results) == 1:  # one image in, one prediction (or error) out
            return _json(status, results[0])
        return _json(status, {"results": results})

    async def _classify(self, found: list[uploads.Upload], as_html: bool) -> list[dict]:
        """Decode and classify on the UPLOAD_SLOTS classify threads, in turn (their queue hands
        the next upload over without a trip through the event loop); a 503 for one that waited
        longer than client_timeout_s."""
        shared, queued = self.shared, time.monotonic()

        def work() -> list[dict]:
            if time.monotonic() - queued > shared.config.client_timeout_s:
                raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE, "busy classifying other uploads",
                                   (("Retry-After", "2"),))
            return uploads.classify_uploads(shared.classifier, found, thumbnails=as_html,
                                            max_bytes=shared.config.max_decode_bytes)

        return await asyncio.get_running_loop().run_in_executor(shared.classify_pool, work)

    async def _within(self, awaitable, timeout_s: float, late: RequestError):
        """``awaitable``'s result; ``late`` after ``timeout_s``, a 503 once the server stops."""
        work = asyncio.ensure_future(awaitable)
        stop = asyncio.ensure_future(self.shared.stopping.wait())
        try:
            done, _ = await asyncio.wait({work, stop}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not work.done():
                work.cancel()
        if work in done:
            return work.result()
        if stop in done:
            raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE, "the server is stopping: send it again "
                               "once it is back", (("Retry-After", "5"),))
        raise late
