"""ModuleOps.open_url (module_utils/_module_ops.py): plain http without ansible's URL stack, the same answers as open_url,
and everything else through open_url, against a real loopback server."""

from __future__ import annotations

import base64
import gzip
import http.server
import json
import threading
import typing as t
import urllib.error
from pathlib import Path

import pytest

from ansible_collections.fleetpatch.rollout.plugins.module_utils._module_ops import ModuleOps, plain_http

BODY = json.dumps({"status": "ok", "version": "1.0.1"}).encode()


class Server:
    """/health (BODY), /gzip (BODY gzip-encoded, as a misconfigured server sends it), /moved (302 to /health),
    /away (302 to an https URL), /missing (404), /auth (BODY only with basic auth user:secret); requests are recorded."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: t.Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                owner.requests.append({"path": self.path, "authorization": self.headers.get("Authorization", ""),
                                       "user_agent": self.headers.get("User-Agent", ""), "x_test": self.headers.get("X-Test", "")})
                body, headers, status = BODY, {}, 200
                if self.path == "/gzip":
                    body, headers = gzip.compress(BODY), {"Content-Encoding": "gzip"}
                elif self.path == "/moved":
                    body, headers, status = b"", {"Location": "/health"}, 302
                elif self.path == "/away":
                    body, headers, status = b"", {"Location": f"https://127.0.0.1:{owner.port}/health"}, 302
                elif self.path == "/missing":
                    body, status = b"no", 404
                elif self.path == "/auth" and self.headers.get("Authorization") != "Basic " + base64.b64encode(b"user:secret").decode():
                    body, headers, status = b"", {"WWW-Authenticate": 'Basic realm="x"'}, 401
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str, *, userinfo: str = "") -> str:
        return f"http://{userinfo}127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Module:
    """What ModuleOps reads of an AnsibleModule when it opens URLs."""

    check_mode = False

    def warn(self, message: str) -> None:
        raise AssertionError(message)


@pytest.fixture(name="server")
def fixture_server() -> t.Iterator[Server]:
    server = Server()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def no_netrc(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NETRC", str(tmp_path / "absent-netrc"))
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def read(url: str, **headers: str) -> tuple[int, bytes]:
    with ModuleOps(t.cast(t.Any, Module())).open_url(url, headers=headers, timeout=5) as response:
        return response.status, response.read()


def test_which_urls_are_plain(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert plain_http("http://127.0.0.1:8080/health") and plain_http("HTTP://example.com")
    assert not plain_http("https://127.0.0.1/health")
    assert not plain_http("file:///srv/artifact.tar.gz")
    assert not plain_http("http://user:secret@127.0.0.1/artifact")  # open_url sends these as basic auth
    assert not plain_http("relative/path")
    assert plain_http("http://127.0.0.1/a@b")  # an @ in the path is not userinfo
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login user password secret\n", encoding="utf-8")
    monkeypatch.setenv("NETRC", str(netrc))
    assert not plain_http("http://127.0.0.1/health")  # open_url reads credentials from it


def test_plain_http_answers_as_open_url_would(server: Server) -> None:
    assert read(server.url("/health"), **{"X-Test": "yes"}) == (200, BODY)
    assert server.requests[-1]["x_test"] == "yes"
    assert read(server.url("/moved")) == (200, BODY)  # urllib's redirects, as open_url follows them
    assert [request["path"] for request in server.requests[-2:]] == ["/moved", "/health"]
    with pytest.raises(urllib.error.HTTPError) as caught:
        read(server.url("/missing"))
    assert caught.value.code == 404
    caught.value.close()


def test_what_only_open_url_does_goes_through_it(server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # a gzip-encoded answer: open_url decompresses it, so the same URL is asked again through open_url
    assert read(server.url("/gzip")) == (200, BODY)
    assert [request["path"] for request in server.requests] == ["/gzip", "/gzip"]
    assert "ansible" not in server.requests[0]["user_agent"].lower()
    # credentials in the URL become basic auth
    assert read(server.url("/auth", userinfo="user:secret@")) == (200, BODY)
    assert server.requests[-1]["authorization"].startswith("Basic ")
    # credentials from a netrc file
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login user password secret\n", encoding="utf-8")
    monkeypatch.setenv("NETRC", str(netrc))
    assert read(server.url("/auth")) == (200, BODY)


def test_a_redirect_out_of_plain_http_is_left_to_open_url(server: Server) -> None:
    # open_url follows it with its own TLS context; this server speaks no TLS, so that attempt fails as a connection error
    with pytest.raises(OSError):
        read(server.url("/away"))
    assert [request["path"] for request in server.requests] == ["/away", "/away"]
