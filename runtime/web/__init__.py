"""Live view and upload in the browser, on the standard library's HTTP server.

``WebServer(classifier, ServeConfig(...), live=True)`` serves a page with the camera's
annotated stream and its live top-k, an MJPEG stream, the newest prediction as JSON, and an
upload that classifies any image; ``cifar-run --camera SRC --serve PORT`` and ``cifar-serve``
are its commands. No OpenCV here: frames are drawn and encoded with Pillow.
"""

from runtime.web.config import ServeConfig, is_loopback, parse_address

__all__ = ["ServeConfig", "ServeError", "WebServer", "is_loopback", "parse_address"]


def __getattr__(name: str):
    # The server (http.server and the page code, ~40 ms of imports) loads when it is first
    # used, so the commands that only read a constant of the config (--token's help) start fast.
    if name in ("ServeError", "WebServer"):
        from runtime.web import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
