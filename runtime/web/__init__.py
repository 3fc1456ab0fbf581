"""Live view and upload in the browser, served by aiohttp (the ``serve`` extra).

``WebServer(classifier, ServeConfig(...), live=True)`` serves a page with the camera's
annotated stream and its live top-k, an MJPEG stream, the newest prediction as JSON, and an
upload that classifies any image; ``cifar-run --camera SRC --serve PORT`` and ``cifar-serve``
are its commands. No OpenCV here: frames are drawn and encoded with Pillow.
"""

from runtime.web.config import SERVE_EXTRA, ServeConfig, ServeError, is_loopback, parse_address

__all__ = ["ServeConfig", "ServeError", "WebServer", "is_loopback", "parse_address"]

# What the server needs beyond the base install (the serve extra): without them, one line.
SERVE_PACKAGES = ("aiohttp", "multidict", "yarl", "frozenlist", "aiosignal", "propcache", "aiohappyeyeballs")


def __getattr__(name: str):
    # The server (aiohttp and the page code) loads when it is first used, so that importing
    # runtime, or a command that only reads a constant of the config, loads none of it.
    if name == "WebServer":
        try:
            from runtime.web import server
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] not in SERVE_PACKAGES:
                raise
            raise ServeError(f"the web server needs {exc.name}, which the base install leaves out: "
                             f"{SERVE_EXTRA}") from None
        return server.WebServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
