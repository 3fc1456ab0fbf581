"""What a live-view server may do: its address, who may use it, and what clients may send."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from runtime.errors import CifarEdgeError, OptionError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
MIN_TOKEN_LENGTH = 8  # characters: a shorter --token is guessed too easily over a network
SERVE_EXTRA = "pip install 'cifar-edge[serve]'"  # what the server needs beyond the base install


class ServeError(CifarEdgeError):
    """The server cannot start: the address is taken, not this machine's, or not allowed, or
    the serve extra is not installed."""


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"  # loopback: this machine only (an SSH tunnel reaches it too)
    port: int = 8000  # 0: any free port (the URL printed at start says which)
    token: str | None = None  # None: one is generated when the address is not loopback
    auth: bool = True  # False (--no-auth): no token even on a public address, with a warning
    max_upload_bytes: int = 20 * 1024 * 1024  # per request: a phone photo is 3-12 MB
    max_files: int = 32  # images per request (several picked at once in the form)
    max_decode_bytes: int = 64 * 1024 * 1024  # memory one image may take to decode: 16 Mpx RGB, 5 Mpx RGBA
    upload_memory_bytes: int = 64 * 1024 * 1024  # request bodies held at once; more wait (then 503)
    max_stream_clients: int = 8  # viewers of /stream.mjpg at once; each costs a send per frame
    # Open connections at once, viewers and API calls together; a request beyond them gets a
    # 503 at once. Above the 200 slow sockets of docs/running.md's probe, far below 1024 fds.
    max_connections: int = 256
    backlog: int = 128  # connections the kernel queues before they are accepted (a LAN's burst)
    stream_max_fps: float = 15.0  # JPEGs per second for viewers: half a 30 fps camera, CPU left for the model
    stream_max_side: int = 1280  # px: 720p streams as it is; a larger frame is halved (or more)
    jpeg_quality: int = 80  # 0-95, Pillow's scale: 80 keeps a 640x480 frame near 40 kB
    header_timeout_s: float = 10.0  # s: a request line and headers, or an idle keep-alive, past this are closed
    body_timeout_s: float = 60.0  # s: a whole upload body (20 MB at 2.7 Mbit/s); later: 408
    client_timeout_s: float = 30.0  # s: a viewer that reads nothing, or an upload's wait for a slot, this long
    stop_grace_s: float = 5.0  # s: on SIGTERM, uploads under way get this long to arrive; later: 503

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise OptionError(f"port {self.port} is not in 0-65535")
        if self.token is not None and not self.auth:
            raise OptionError("--token and --no-auth contradict each other: pick one")
        if self.token is not None and (len(self.token) < MIN_TOKEN_LENGTH or not self.token.isprintable()
                                       or " " in self.token):
            raise OptionError(f"--token must be at least {MIN_TOKEN_LENGTH} printable characters "
                              "without spaces (or leave it out: one is generated)")

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses; a host name other than localhost counts as
    public (it may resolve to any interface)."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_address(value: str) -> tuple[str, int]:
    """"8000" -> ("127.0.0.1", 8000); "0.0.0.0:8000", "[::]:8000", "pi.local:8000" as written."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host = "127.0.0.1"
    elif host.startswith("["):
        if not host.endswith("]"):
            raise OptionError(f"{value!r}: an IPv6 address goes in brackets, e.g. [::1]:8000")
        host = host[1:-1]
    elif ":" in host:
        raise OptionError(f"{value!r}: write an IPv6 address in brackets, e.g. [::1]:8000")
    if not port.isdigit() or int(port) > 65535 or (sep and not host):
        raise OptionError(f"{value!r} is not [HOST:]PORT, e.g. 8000 or 0.0.0.0:8000")
    return host, int(port)
