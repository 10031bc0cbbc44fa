# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: one plain-http GET over a socket, for the common answer. Not a public API.

A health check or an artifact download over plain http is one GET answered 200 (or 206) with a Content-Length or
a body up to the close. urllib would answer it alike, but importing urllib.request costs more CPU than the rest of
the exchange (it loads http.client, email.* and ssl, about 12 ms per module execution). get() sends the request
urllib sends (same request line, Host, Accept-Encoding: identity, its User-Agent, Connection: close, the caller's
headers title-cased), follows plain-http redirects as urllib's redirect handler does, and raises what urllib raises
for an error status (urllib.error.HTTPError, with the same code, reason and message) or a failed connection
(urllib.error.URLError); those are imported on that path only. Anything it does not do the same way raises
Fallback before the caller has seen a byte: a proxy from the environment, a header or URL that is not plain
printable ASCII, a chunked or unusual answer, a redirect loop (ask urllib), a redirect out of plain http or a
gzip-encoded body (ask ansible's open_url, as before). Standard library only.
"""

from __future__ import annotations

import os
import socket
import sys
import typing as t
import urllib.parse

from ansible_collections.fleetpatch.rollout.plugins.module_utils._errors import FleetpatchError

__all__ = ["Fallback", "Response", "USER_AGENT", "get", "plain_http"]

MAX_LINE = 65536  # http.client's limits
MAX_HEADERS = 100
MAX_REDIRECTS = 10  # urllib's HTTPRedirectHandler.max_redirections
REDIRECTS = (301, 302, 303, 307, 308)
USER_AGENT = f"Python-urllib/{sys.version_info[0]}.{sys.version_info[1]}"  # what urllib's opener sends
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


class Fallback(FleetpatchError):
    """The exchange needs urllib (open_url False) or ansible's open_url (open_url True); nothing was returned yet."""

    def __init__(self, reason: str, *, open_url: bool = False) -> None:
        super().__init__(reason)
        self.open_url = open_url


def plain_http(url: str) -> bool:
    """Whether ansible's open_url would do nothing for url that urllib does not do alike.

    Plain http (no TLS context, so no CA bundle to load), no credentials in the URL (open_url turns them into basic
    auth) and no netrc file (open_url reads one for credentials).
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "http" or "@" in rest.split("/", 1)[0]:
        return False
    netrc = os.environ.get("NETRC")
    return not os.path.exists(os.path.expanduser("~/.netrc") if netrc is None else netrc)


class Headers:
    """Response headers: get() as email.message.Message's (case-insensitive, first occurrence, None when absent)."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._items = items

    def get(self, name: str, default: t.Any = None) -> t.Any:
        wanted = name.lower()
        for key, value in self._items:
            if key.lower() == wanted:
                return value
        return default

    def __getitem__(self, name: str) -> str | None:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def get_all(self, name: str, failobj: t.Any = None) -> t.Any:
        found = [value for key, value in self._items if key.lower() == name.lower()]
        return found or failobj


class Response:
    """The answer's body, read as http.client's HTTPResponse reads one that is not chunked (same short-read rules)."""

    def __init__(self, sock: socket.socket, fp: t.Any, *, url: str, status: int, reason: str, headers: Headers, length: int | None) -> None:
        self._sock, self.fp = sock, fp
        self.url, self.status, self.code, self.reason, self.headers, self.length = url, status, status, reason, headers, length
        self.msg = headers  # as http.client: msg is the headers

    def getcode(self) -> int:
        return self.status

    def geturl(self) -> str:
        return self.url

    def info(self) -> Headers:
        return self.headers

    def getheader(self, name: str, default: t.Any = None) -> t.Any:
        return self.headers.get(name, default)

    def getheaders(self) -> list[tuple[str, str]]:
        return self.headers.items()

    @property
    def closed(self) -> bool:
        return self.fp is None

    def close(self) -> None:
        fp, self.fp = self.fp, None
        if fp is not None:
            fp.close()
            self._sock.close()

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc_info: t.Any) -> None:
        self.close()

    def read(self, amt: int | None = None) -> bytes:
        if self.fp is None:
            return b""
        if amt is None or amt < 0:
            if self.length is None:
                data = self.fp.read()
            else:
                data = self.fp.read(self.length)
                if len(data) < self.length:
                    import http.client  # pylint: disable=import-outside-toplevel  # what http.client raises, on this path only

                    expected = self.length - len(data)
                    self.close()
                    raise http.client.IncompleteRead(data, expected)
                self.length = 0
            self.close()
            return data
        return self._bounded(self.fp.read, amt)

    def read1(self, n: int = -1) -> bytes:
        if self.fp is None:
            return b""
        return self._bounded(self.fp.read1, n)

    def _bounded(self, reader: t.Callable[[int], bytes], amt: int) -> bytes:
        if self.length is not None and (amt < 0 or amt > self.length):
            amt = self.length
        data = reader(amt)
        if not data and amt:
            self.close()  # a short body ends the read, as http.client's read(amt) and read1 do
        elif self.length is not None:
            self.length -= len(data)
            if not self.length:
                self.close()
        return data

    def readable(self) -> bool:
        return True


def _target(url: str) -> tuple[str, str, int, str]:
    """(Host header, host, port, request target) of a plain URL that urllib sends unchanged; Fallback otherwise."""
    if not all("\x21" <= char <= "\x7e" for char in url):
        raise Fallback("not plain printable ASCII")
    parts = urllib.parse.urlsplit(url.split("#", 1)[0])
    netloc = parts.netloc
    host, port = netloc, ""
    if ":" in netloc and not netloc.endswith("]"):  # host:port, [v6]:port
        host, _sep, port = netloc.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not host or not all(char in "0123456789abcdefABCDEF:." for char in host):
            raise Fallback("not a plain IPv6 address")
    elif not host or not all(char.isalnum() or char in ".-_" for char in host):
        raise Fallback("not a plain host name")
    if port and not port.isdigit():
        raise Fallback("not a plain port")
    selector = url.split("#", 1)[0][len(parts.scheme) + 3 + len(netloc):] or "/"
    return netloc, host, int(port) if port else 80, selector


def _request(url: str, headers: t.Mapping[str, str]) -> tuple[str, int, bytes]:
    """(host, port, request bytes) as urllib's HTTPHandler writes them."""
    host_header, host, port, selector = _target(url)
    fields = {"Host": host_header, "Accept-Encoding": "identity", "User-Agent": USER_AGENT}
    for name, value in headers.items():
        if not name or not set(name) <= _TOKEN or not all(" " <= char <= "~" for char in str(value)):
            raise Fallback("a header that is not plain")  # urllib refuses or encodes it: its message then
        fields[name.title()] = str(value)
    fields["Connection"] = "close"
    lines = [f"GET {selector} HTTP/1.1"] + [f"{name}: {value}" for name, value in fields.items()]
    return host, port, ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def _connect(host: str, port: int, request: bytes, timeout: float) -> socket.socket:
    try:
        sock = socket.create_connection((host, port), timeout)
    except OSError as exc:
        import urllib.error  # pylint: disable=import-outside-toplevel  # what urllib raises, on this path only

        raise urllib.error.URLError(exc) from None
    try:
        sock.sendall(request)
    except OSError as exc:
        sock.close()
        import urllib.error  # pylint: disable=import-outside-toplevel

        raise urllib.error.URLError(exc) from None
    return sock


def _status_line(fp: t.Any) -> tuple[int, str]:
    line = fp.readline(MAX_LINE + 1)
    if not line:
        import http.client  # pylint: disable=import-outside-toplevel  # what http.client raises, on this path only

        raise http.client.RemoteDisconnected("Remote end closed connection without response")
    parts = line.decode("iso-8859-1").rstrip("\r\n").split(None, 2)
    if len(line) > MAX_LINE or len(parts) < 2 or parts[0] not in ("HTTP/1.0", "HTTP/1.1") or not parts[1].isdigit():
        raise Fallback("an unusual status line")
    status = int(parts[1])
    if not 200 <= status <= 599:
        raise Fallback("an interim or unusual status")
    return status, parts[2] if len(parts) > 2 else ""


def _headers(fp: t.Any) -> Headers:
    items = []
    while True:
        line = fp.readline(MAX_LINE + 1)
        if line in (b"\r\n", b"\n", b""):
            return Headers(items)
        text = line.decode("iso-8859-1")
        name, sep, value = text.partition(":")
        if len(line) > MAX_LINE or len(items) >= MAX_HEADERS or not sep or not name or not set(name) <= _TOKEN:
            raise Fallback("unusual headers")
        items.append((name, value.lstrip(" \t").rstrip("\r\n")))


def _length(status: int, headers: Headers) -> int | None:
    if headers.get("transfer-encoding") is not None:
        raise Fallback("a transfer encoding")
    if status in (204, 304):
        return 0
    length = headers.get("content-length")
    if length is None:
        return None
    values = {value.strip() for value in headers.get_all("content-length")}
    if len(values) != 1 or not length.strip().isdigit():
        raise Fallback("an unusual Content-Length")
    return int(length.strip())


def _exchange(url: str, headers: t.Mapping[str, str], timeout: float) -> Response:
    host, port, request = _request(url, headers)
    sock = _connect(host, port, request, timeout)
    fp = sock.makefile("rb")
    try:
        status, reason = _status_line(fp)
        found = _headers(fp)
        return Response(sock, fp, url=url, status=status, reason=reason, headers=found, length=_length(status, found))
    except BaseException:
        fp.close()
        sock.close()
        raise


def _http_error(url: str, response: Response) -> Exception:
    """urllib's exception for an error status (its HTTPDefaultErrorHandler's): code, reason, headers, the body."""
    from urllib.error import HTTPError  # pylint: disable=import-outside-toplevel  # on this path only

    return HTTPError(url, response.status, response.reason, t.cast(t.Any, response.headers), t.cast(t.Any, response))


def get(url: str, *, headers: t.Mapping[str, str], timeout: float) -> Response:
    """GET a plain_http url as urllib's opener would (see the module's note); Fallback when that takes urllib or open_url."""
    if any(name.lower() == "http_proxy" and value for name, value in os.environ.items()):
        raise Fallback("a proxy from the environment")
    seen: list[str] = []
    while True:
        response = _exchange(url, headers, timeout)
        location = response.headers.get("location") or response.headers.get("uri")
        if response.status in REDIRECTS and location:
            response.read()
            response.close()
            if len(seen) >= MAX_REDIRECTS or url in seen:
                raise Fallback("a redirect loop")  # urllib's error for it
            seen.append(url)
            parts = urllib.parse.urlsplit(urllib.parse.urljoin(url, location))
            url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path or "/", parts.query, parts.fragment))
            if not plain_http(url):
                raise Fallback("a redirect out of plain http", open_url=True)
            continue
        if not 200 <= response.status < 300:
            raise _http_error(url, response)
        if (response.headers.get("content-encoding") or "").lower() == "gzip":
            response.close()
            raise Fallback("a gzip-encoded body", open_url=True)  # open_url decompresses it
        return response
