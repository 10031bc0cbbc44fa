"""module_utils/_plain_http.py: one plain-http GET over a socket answers as urllib would, and leaves to urllib or
open_url what it does not do alike, against a real loopback server."""

from __future__ import annotations

import gzip
import http.client
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import typing as t
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ansible_collections.fleetpatch.rollout.plugins.module_utils import _plain_http
from ansible_collections.fleetpatch.rollout.plugins.module_utils._plain_http import Fallback, Response, get

BODY = json.dumps({"status": "ok", "version": "1.0.1"}).encode()
REPO = Path(__file__).resolve().parents[4]


class Server:
    """A loopback HTTP/1.0 server (http.server's default) whose paths answer in the shapes a health endpoint or an
    artifact origin may use; every request's path and headers are recorded."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: t.Any) -> None:
                pass

            def answer(self, status: int, body: bytes, headers: dict[str, str], *, length: bool = True) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                owner.requests.append(dict(self.headers.items(), path=self.path))
                path = self.path
                if path == "/health":
                    self.answer(200, BODY, {})
                elif path == "/until-close":
                    self.answer(200, BODY, {}, length=False)
                elif path == "/range":
                    offset = int(self.headers["Range"].split("=")[1].rstrip("-"))
                    self.answer(206, BODY[offset:], {"Content-Range": f"bytes {offset}-{len(BODY) - 1}/{len(BODY)}"})
                elif path == "/moved":
                    self.answer(302, b"see /health", {"Location": "/health"})
                elif path == "/loop":
                    self.answer(302, b"", {"Location": "/loop"})
                elif path == "/away":
                    self.answer(301, b"", {"Location": f"https://127.0.0.1:{owner.port}/health"})
                elif path == "/missing":
                    self.answer(404, b"no", {})
                elif path == "/unavailable":
                    self.answer(503, b"later", {"Retry-After": "1"})
                elif path == "/gzip":
                    self.answer(200, gzip.compress(BODY), {"Content-Encoding": "gzip"})
                elif path == "/chunked":
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY))
                elif path == "/short":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(BODY) + 100))
                    self.end_headers()
                    self.wfile.write(BODY)
                elif path == "/silent":
                    owner.silent.wait(10)

        self.silent = threading.Event()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.silent.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(name="server")
def fixture_server() -> t.Iterator[Server]:
    server = Server()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def no_proxy_or_netrc(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NETRC", str(tmp_path / "absent-netrc"))
    for name in ("http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def outcome(opener: t.Callable[..., t.Any], url: str, **headers: str) -> tuple[t.Any, ...]:
    """What a caller sees: (status, body, Content-Length, Content-Range) or (exception type, str, code)."""
    try:
        with opener(url, headers=headers, timeout=5) as response:
            return (response.status, response.read(), response.headers.get("content-length"),
                    response.headers.get("Content-Range"))
    except urllib.error.HTTPError as exc:
        exc.close()
        return type(exc), str(exc), exc.code, exc.reason
    except OSError as exc:
        return type(exc), str(exc)


def by_urllib(url: str, *, headers: t.Mapping[str, str], timeout: float) -> t.Any:
    return urllib.request.build_opener().open(urllib.request.Request(url, headers=dict(headers)), timeout=timeout)


@pytest.mark.parametrize(("path", "headers"), [
    ("/health", {"X-Test": "yes"}),
    ("/until-close", {}),
    ("/range", {"Range": "bytes=5-"}),
    ("/moved", {}),
    ("/missing", {}),
    ("/unavailable", {}),
])
def test_the_same_answer_as_urllib_without_it(server: Server, path: str, headers: dict[str, str]) -> None:
    ours = outcome(get, server.url(path), **headers)
    asked = len(server.requests)
    assert ours == outcome(by_urllib, server.url(path), **headers)
    # the same request on the wire: path, headers and their values (urllib's User-Agent too)
    assert server.requests[:asked] == server.requests[asked:]
    if path in ("/health", "/until-close", "/range"):
        assert ours[0] in (200, 206) and ours[1] == BODY[5 if path == "/range" else 0:]
        assert server.requests[0]["X-Test" if headers.get("X-Test") else "Connection"] in ("yes", "close")


def test_a_response_of_its_own_and_a_redirect_followed_here(server: Server) -> None:
    response = get(server.url("/moved"), headers={}, timeout=5)
    assert isinstance(response, Response) and response.getcode() == 200 and response.geturl() == server.url("/health")
    assert response.read1(10) == BODY[:10] and response.read(1000) == BODY[10:] and response.read(10) == b""
    assert response.closed
    assert [request["path"] for request in server.requests] == ["/moved", "/health"]


def test_a_short_body_reads_as_http_client_reads_it(server: Server) -> None:
    with get(server.url("/short"), headers={}, timeout=5) as response:
        assert response.read(len(BODY) + 50) == BODY and response.read(50) == b""  # the end, as http.client's read(amt)
    with get(server.url("/short"), headers={}, timeout=5) as response, pytest.raises(http.client.IncompleteRead):
        response.read()


@pytest.mark.parametrize(("path", "open_url"), [("/chunked", False), ("/loop", False), ("/away", True), ("/gzip", True)])
def test_what_it_does_not_do_alike_is_left_to_urllib_or_open_url(server: Server, path: str, open_url: bool) -> None:
    with pytest.raises(Fallback) as caught:
        get(server.url(path), headers={}, timeout=5)
    assert caught.value.open_url is open_url


def test_odd_requests_are_left_to_urllib(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    for url, headers in ((server.url("/health"), {"X-Test": "a\r\nInjected: yes"}), (server.url("/health"), {"X Bad": "1"}),
                         (server.url("/h ealth"), {}), (server.url("/héalth"), {}), ("http://exa mple/", {})):
        with pytest.raises(Fallback):
            get(url, headers=headers, timeout=5)
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:1")
    with pytest.raises(Fallback):
        get(server.url("/health"), headers={}, timeout=5)
    assert not server.requests  # nothing was sent


def test_transport_failures_as_urllib_reports_them(server: Server) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/health"
    assert outcome(get, closed) == outcome(by_urllib, closed)
    assert outcome(get, closed)[0] is urllib.error.URLError
    with pytest.raises(TimeoutError):
        get(server.url("/silent"), headers={}, timeout=0.3)


def test_the_common_answer_loads_no_http_stack(server: Server) -> None:
    # in a fresh interpreter, as on a host: neither urllib.request nor http.client nor ssl is imported
    code = (
        "import sys; from ansible.plugins.loader import init_plugin_loader; init_plugin_loader([sys.argv[1]]);"
        "from ansible_collections.fleetpatch.rollout.plugins.module_utils._plain_http import get;"
        "r = get(sys.argv[2], headers={}, timeout=5); body = r.read(); r.close();"
        "print(body.decode(), sorted(m for m in ('urllib.request', 'urllib.error', 'http.client', 'ssl') if m in sys.modules))"
    )
    env = dict(os.environ, NETRC=os.devnull + "-absent")
    proc = subprocess.run([sys.executable, "-c", code, str(REPO / "collections"), server.url("/health")],
                          capture_output=True, text=True, check=True, env=env)
    assert proc.stdout.split() == [BODY.decode().split()[0], *BODY.decode().split()[1:], "[]"]
    assert _plain_http.USER_AGENT == urllib.request.OpenerDirector().addheaders[0][1]
