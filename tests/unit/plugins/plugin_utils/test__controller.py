from __future__ import annotations

import datetime
import gzip
import http.server
import pathlib
import socket
import threading
import typing as t

import pytest
from ansible.module_utils import urls

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._calendar import CalendarError
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._controller import CLOCK_ENV, decision_clock, probe_many


def test_rollout_clock_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CLOCK_ENV, "2026-01-01T00:00:00Z")
    now, source = decision_clock("2026-03-29T01:30:00Z")
    assert (now, source) == (datetime.datetime(2026, 3, 29, 1, 30, tzinfo=datetime.timezone.utc), "rollout_clock")


def test_the_environment_injects_the_clock_when_no_rollout_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CLOCK_ENV, "2026-01-01T00:00:00Z")
    assert decision_clock(None) == (datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc), CLOCK_ENV)


def test_otherwise_the_controller_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CLOCK_ENV, raising=False)
    before = datetime.datetime.now(datetime.timezone.utc)
    now, source = decision_clock("")
    assert source == "controller"
    assert before - datetime.timedelta(seconds=1) <= now <= datetime.datetime.now(datetime.timezone.utc)


def test_a_bad_clock_is_refused_naming_it() -> None:
    with pytest.raises(CalendarError, match="rollout_clock"):
        decision_clock("yesterday")


class _Health(http.server.BaseHTTPRequestHandler):
    """Loopback health endpoints: /ok, /down (503), /moved (-> /ok), /tls (-> https), /gzip (gzip-encoded /ok)."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        routes: dict[str, tuple[int, dict[str, str], bytes]] = {
            "/ok": (200, {}, b'{"status": "ok", "version": "1.0.1"}'),
            "/down": (503, {}, b'{"status": "degraded", "version": "1.0.1"}'),
            "/moved": (302, {"Location": "/ok"}, b""),
            "/tls": (302, {"Location": f"https://127.0.0.1:{self.server.server_address[1]}/ok"}, b""),
            "/gzip": (200, {"Content-Encoding": "gzip"}, gzip.compress(b'{"status": "ok", "version": "1.0.2"}')),
        }
        code, headers, body = routes.get(self.path, (404, {}, b""))
        self.send_response(code)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: t.Any) -> None:
        pass


@pytest.fixture(name="health_server")
def _health_server(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> t.Iterator[str]:
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(name="open_url_calls")
def _open_url_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The URLs that went through ansible's open_url (still called: it answers)."""
    calls: list[str] = []
    real = urls.open_url

    def recording(url: str, **kwargs: t.Any) -> t.Any:
        calls.append(url)
        return real(url, **kwargs)

    monkeypatch.setattr(urls, "open_url", recording)
    return calls


def test_plain_http_probes_answer_without_open_url(health_server: str, open_url_calls: list[str]) -> None:
    results = probe_many({"a": f"{health_server}/ok", "b": f"{health_server}/down", "c": f"{health_server}/moved"}, timeout=5)
    assert (results["a"]["ok"], results["a"]["status"], results["a"]["version"]) == (True, 200, "1.0.1")
    assert (results["b"]["ok"], results["b"]["status"], results["b"]["reason"]) == (False, 503, "HTTP 503, status 'degraded'")
    # a redirect inside plain http is followed, as open_url follows it
    assert (results["c"]["ok"], results["c"]["url"]) == (True, f"{health_server}/moved")
    assert not open_url_calls


def test_what_only_open_url_does_goes_through_it(health_server: str, open_url_calls: list[str]) -> None:
    results = probe_many({"gzip": f"{health_server}/gzip", "tls": f"{health_server}/tls"}, timeout=5)
    # a gzip-encoded answer: open_url decompresses it
    assert (results["gzip"]["ok"], results["gzip"]["version"]) == (True, "1.0.2")
    # a redirect out of plain http: open_url is asked from the start (and fails here: nothing speaks TLS on the port)
    assert results["tls"]["ok"] is False and results["tls"]["reason"]
    assert sorted(open_url_calls) == sorted([f"{health_server}/gzip", f"{health_server}/tls"])


def test_credentials_in_the_url_go_through_open_url(health_server: str, open_url_calls: list[str]) -> None:
    url = health_server.replace("http://", "http://user:secret@") + "/ok"
    assert probe_many({"a": url}, timeout=5)["a"]["ok"] is True
    assert open_url_calls == [url]


def test_a_netrc_file_sends_every_probe_through_open_url(health_server: str, open_url_calls: list[str], monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: pathlib.Path) -> None:
    (tmp_path / "netrc").write_text("machine 127.0.0.1 login user password secret\n", encoding="utf-8")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert probe_many({"a": f"{health_server}/ok"}, timeout=5)["a"]["ok"] is True
    assert open_url_calls == [f"{health_server}/ok"]


def test_an_unreachable_host_is_unhealthy_with_a_reason(open_url_calls: list[str], monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: pathlib.Path) -> None:
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: the connection is refused
        result = probe_many({"a": f"http://127.0.0.1:{port}/health"}, timeout=5)["a"]
    assert result["ok"] is False and result["status"] is None
    assert "Connection refused" in result["reason"] or "ConnectionRefused" in result["reason"]
    assert not open_url_calls
