"""``WebServer``: the page, the MJPEG stream and the JSON API over a Classifier, served by
aiohttp on an event loop of its own thread, so that the camera loop keeps its thread and
``publish`` never waits.

What aiohttp gives (docs/running.md has the measurements that chose it): strict framing (a
Content-Length twice, or not digits, is a 400), a deadline for a request's headers (its
keep-alive timeout runs from the connection's start, whatever bytes trickle in), a listen
backlog of our choosing, bodies read as they stream in, a linear multipart parser, and a
graceful stop. What is ours (``runtime.web.app``): the token and Host rules, the cross-site
refusal, the limits on bodies, decoding and connections, and the answers.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import TYPE_CHECKING, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from runtime.camera.metrics import LiveMetrics
from runtime.web.app import Shared, make_app
from runtime.web.auth import Access, display_urls
from runtime.web.config import ServeConfig, ServeError
from runtime.web.stream import FrameHub

if TYPE_CHECKING:
    from runtime.camera.loop import FrameResult
    from runtime.image.collect import Collector
    from runtime.model.classifier import Classifier

__all__ = ["ServeError", "WebServer"]

SHUTDOWN_S = 2.0  # s: after the grace, what aiohttp gives a request before it cancels it
LINGER_S = 5.0  # s: the rest of a refused body is read (and dropped) this long, so the client sees the answer


class _OneLine(logging.Handler):
    """aiohttp's own warnings and errors as one line each in the server's log, never a
    traceback on stderr. A client's malformed request, which aiohttp answers with a 400, and a
    client that goes away mid-request are the client's business and are not logged (a flood
    of them would flood the log)."""

    def __init__(self, log: Callable[[str], None]):
        super().__init__(logging.WARNING)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and isinstance(record.exc_info[1], (HttpProcessingError, ConnectionError)):
            return  # a malformed request (answered 400) or a client that went away
        self.log(f"http: {record.getMessage().splitlines()[0]}")


class _Running:
    """A started server: its event loop on the ``http-server`` thread, aiohttp's runner and
    listening site, and what the requests share."""

    def __init__(self, loop: asyncio.AbstractEventLoop, thread: threading.Thread, port: int,
                 log: Callable[[str], None]):
        self.loop, self.thread, self.port = loop, thread, port
        self.log_handler = _OneLine(log)
        logging.getLogger("aiohttp").addHandler(self.log_handler)
        self.runner: web.AppRunner | None = None
        self.site: web.SockSite | None = None
        self.shared: Shared | None = None

    async def serve(self, sock: socket.socket, make_shared: Callable[[], Shared]) -> None:
        config = (shared := make_shared()).config
        self.shared = shared
        self.runner = web.AppRunner(make_app(shared), access_log=None, handle_signals=False,
                                    shutdown_timeout=SHUTDOWN_S, keepalive_timeout=config.header_timeout_s,
                                    lingering_time=LINGER_S)
        await self.runner.setup()
        shared.connections = lambda: len(self.runner.server.connections)
        self.site = web.SockSite(self.runner, sock, backlog=config.backlog)
        await self.site.start()

    async def stop(self, grace_s: float) -> bool:
        """Stop accepting; uploads under way get ``grace_s`` to arrive, then a 503; the rest
        end or are cancelled. True when every request ended by itself."""
        loop, shared = asyncio.get_running_loop(), self.shared
        await self.site.stop()
        deadline = loop.time() + grace_s
        while shared.uploads_in_flight and loop.time() < deadline:
            await asyncio.sleep(0.05)
        shared.stopping.set()
        deadline = loop.time() + 1.0  # the 503s are written
        while shared.uploads_in_flight and loop.time() < deadline:
            await asyncio.sleep(0.02)
        ended = not shared.uploads_in_flight
        await self.runner.cleanup()  # idle connections closed; the others get SHUTDOWN_S
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        return ended

    def close(self, grace_s: float) -> bool:
        """Stop (from another thread), end the loop and its thread, join every thread."""
        try:
            ended = asyncio.run_coroutine_threadsafe(self.stop(grace_s), self.loop).result(grace_s + SHUTDOWN_S + 5)
        except Exception:  # a stop that did not finish: the loop ends anyway
            ended = False
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=3.0)
        if not self.thread.is_alive():
            self.loop.close()
        if self.shared is not None:
            self.shared.shutdown_pools()
        logging.getLogger("aiohttp").removeHandler(self.log_handler)
        return ended


def _bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, not yet listening; ServeError in one line if it cannot be."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart at once (TIME_WAIT sockets)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot serve on {host}:{port}: {exc.strerror or exc} "
                         "(another server on that port? pick another one)") from None
    return sock


class WebServer:
    """Serve ``classifier`` over HTTP; ``live=True`` adds the stream, /api/latest and /metrics,
    fed by ``publish`` from the camera loop; ``collector`` adds the label page over its folder.

    >>> with WebServer(clf, ServeConfig(port=8000), live=True, log=print) as server:
    ...     for result in loop.classify_stream(source, clf):
    ...         server.publish(result)
    """

    def __init__(self, classifier: "Classifier", config: ServeConfig | None = None, *,
                 live: bool = False, log: Callable[[str], None] = lambda _m: None,
                 metrics: LiveMetrics | None = None, collector: "Collector | None" = None):
        config = config or ServeConfig()
        self.classifier, self.config, self.log = classifier, config, log
        self.collector = collector  # --collect DIR: its frames are labelled on /label
        self.hub = FrameHub(max_viewers=config.max_stream_clients, max_fps=config.stream_max_fps,
                            max_side=config.stream_max_side, quality=config.jpeg_quality,
                            log=log) if live else None
        if self.hub is not None:
            self.hub.set_status(model=classifier.model_path.name, reload_error=None)
        # /metrics: the camera loop's counters (``run_camera`` keeps them and hands them over);
        # without them a live server keeps its own, counted in ``publish``.
        self._counts_frames = live and metrics is None
        self.metrics = LiveMetrics(classifier.class_names, 0.0, classifier.model_path.name) \
            if self._counts_frames else metrics
        self._httpd: _Running | None = None
        self._access: Access | None = None

    def start(self) -> "WebServer":
        """Bind, then serve on a background thread; logs the URL(s) to open."""
        config = self.config
        sock = _bind(config.host, config.port)
        port = sock.getsockname()[1]
        self._access = Access.for_config(config, port)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="http-server", daemon=True)
        thread.start()
        running = _Running(loop, thread, port, self.log)
        make_shared = lambda: Shared(self.classifier, config, self._access, self.hub, self.log,  # noqa: E731
                                     self.metrics, self.collector)
        try:
            asyncio.run_coroutine_threadsafe(running.serve(sock, make_shared), loop).result(timeout=30)
        except BaseException:
            running.close(0.0)
            sock.close()
            raise
        self._httpd = running
        if self.hub is not None:
            self.hub.start()
        self._log_start()
        return self

    @property
    def port(self) -> int:
        return self._httpd.port

    @property
    def token(self) -> str | None:
        return self._access.token

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
        if self._counts_frames:
            self.metrics.observe(result)

    def use(self, classifier: "Classifier") -> None:
        """A reloaded model: uploads, /api/info and /api/latest answer with it from now on."""
        self.classifier = classifier
        if self._httpd is not None and self._httpd.shared is not None:
            self._httpd.shared.use(classifier)
        if self.hub is not None:
            self.hub.set_status(model=classifier.model_path.name, reload_error=None)

    def refused(self, reason: str) -> None:
        """A reload refused: /api/latest says why, while the running model answers."""
        if self.hub is not None:
            self.hub.set_status(reload_error=reason)

    def close(self) -> None:
        """Stop serving: viewers and the encoder end, uploads under way get ``stop_grace_s`` to
        arrive (then a 503), open connections are shut, every thread joined."""
        if self.hub is not None:
            self.hub.close()
        if self._httpd is None:
            return
        if not self._httpd.close(self.config.stop_grace_s):
            self.log("some requests did not end in time; they were cancelled")
        self._httpd = None

    def __enter__(self) -> "WebServer":
        return self.start() if self._httpd is None else self

    def __exit__(self, *exc) -> None:
        self.close()
