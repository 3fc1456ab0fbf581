"""Who may use the server: a token on any address but loopback, as Jupyter does it.

The token is accepted as ``Authorization: Bearer TOKEN`` (scripts), as ``?token=TOKEN`` (the
URL printed at start), which also sets an HttpOnly, SameSite=Strict cookie so that the page's
stream and API calls need nothing more, or as that cookie. Without a token (loopback), the
Host header must name this machine, so that a web page cannot reach the server through a
host name it re-points at 127.0.0.1 (DNS rebinding). Whatever the address, a request that
changes something (a POST) and says it comes from another site (``Origin``,
``Sec-Fetch-Site``) is refused: a page elsewhere cannot make a visitor's browser upload to it.
"""

from __future__ import annotations

import hmac
import secrets
import socket
from dataclasses import dataclass
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from typing import Mapping
from urllib.parse import parse_qs, urlsplit

from runtime.web.config import LOOPBACK_NAMES, ServeConfig


@dataclass(frozen=True)
class Verdict:
    status: HTTPStatus  # OK, or UNAUTHORIZED / FORBIDDEN with ``message``
    message: str = ""
    set_cookie: str | None = None  # a Set-Cookie value to send: the token came in the URL

    @property
    def ok(self) -> bool:
        return self.status == HTTPStatus.OK


@dataclass(frozen=True)
class Access:
    token: str | None  # None: anyone who can connect may use the server
    cookie_name: str
    local_hosts_only: bool  # no token on loopback: check the Host header instead

    @classmethod
    def for_config(cls, config: ServeConfig, port: int) -> "Access":
        """The rule for ``config`` bound to ``port``: a token when asked for or when the
        address is not loopback (generated unless given), none with --no-auth."""
        token = config.token
        if token is None and config.auth and not config.loopback:
            token = secrets.token_urlsafe(24)  # 192 random bits, URL-safe
        return cls(token, f"cifar_edge_token_{port}", local_hosts_only=token is None and config.loopback)

    def check(self, headers: Mapping[str, str], query: str) -> Verdict:
        if self.token is None:
            if self.local_hosts_only and not _names_this_machine(headers.get("Host")):
                return Verdict(HTTPStatus.FORBIDDEN, f"Host {headers.get('Host')!r} is not this "
                               "machine; the server is bound to loopback (open it as localhost or "
                               "127.0.0.1, or serve on 0.0.0.0 with a token)")
            return Verdict(HTTPStatus.OK)
        scheme, _, bearer = (headers.get("Authorization") or "").partition(" ")
        if scheme.lower() == "bearer" and self._matches(bearer.strip()):
            return Verdict(HTTPStatus.OK)
        from_url = parse_qs(query).get("token", [""])[0]
        if self._matches(from_url):
            return Verdict(HTTPStatus.OK, set_cookie=f"{self.cookie_name}={self.token}; Path=/; "
                                                     "HttpOnly; SameSite=Strict")
        if self._matches(_cookie(headers.get("Cookie"), self.cookie_name)):
            return Verdict(HTTPStatus.OK)
        return Verdict(HTTPStatus.UNAUTHORIZED, "a token is required: open the URL printed when "
                       "the server started (it ends in ?token=...), or send the header "
                       "'Authorization: Bearer TOKEN'")

    def _matches(self, given: str) -> bool:
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())


SAFE_METHODS = ("GET", "HEAD", "OPTIONS")  # methods that change nothing here
SAME_SITE_FETCHES = ("same-origin", "none")  # Sec-Fetch-Site of the page's own requests, or a typed URL


def same_origin(method: str, headers: Mapping[str, str]) -> Verdict:
    """FORBIDDEN for a state-changing request that a browser marks as sent by another origin
    (a cross-site form or fetch); OK for everything else, scripts (no such headers) included."""
    if method.upper() in SAFE_METHODS:
        return Verdict(HTTPStatus.OK)
    fetch_site = (headers.get("Sec-Fetch-Site") or "").strip().lower()
    origin = (headers.get("Origin") or "").strip()
    if fetch_site and fetch_site not in SAME_SITE_FETCHES:
        return _cross_site(f"Sec-Fetch-Site: {fetch_site}")
    if origin and _origin_host(origin) != (headers.get("Host") or "").strip().lower():
        return _cross_site(f"Origin: {origin}")
    return Verdict(HTTPStatus.OK)


def _origin_host(origin: str) -> str | None:
    """"http://127.0.0.1:8000" -> "127.0.0.1:8000"; None for "null" and anything not http(s)."""
    parts = urlsplit(origin)
    return parts.netloc.lower() if parts.scheme in ("http", "https") and parts.netloc else None


def _cross_site(said: str) -> Verdict:
    return Verdict(HTTPStatus.FORBIDDEN, f"refused: a request from another site ({said}); this "
                   "server takes uploads from its own page and from scripts only")


def _cookie(header: str | None, name: str) -> str:
    try:
        morsel = SimpleCookie(header or "").get(name)
    except CookieError:
        return ""
    return morsel.value if morsel is not None else ""


def _names_this_machine(host_header: str | None) -> bool:
    if host_header is None:
        return True  # HTTP/1.0 clients send none; browsers (the rebinding risk) always do
    host = host_header.strip().lower()
    if host.startswith("["):  # [::1]:8000
        host = host[1:].partition("]")[0]
    else:
        host = host.rpartition(":")[0] if ":" in host else host
    return host in LOOPBACK_NAMES or host.endswith(".localhost")


def display_urls(host: str, port: int, token: str | None) -> list[str]:
    """The URLs to print at start: for a wildcard address this machine's name and loopback."""
    query = f"?token={token}" if token else ""
    if host in ("", "0.0.0.0", "::"):
        hosts = [socket.gethostname(), "127.0.0.1"]
    else:
        hosts = [host]
    return [f"http://{f'[{h}]' if ':' in h else h}:{port}/{query}" for h in hosts]
