"""The one downloader (_fetch) on the apply path (_release.fetch_artifact), against a misbehaving loopback server."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
import time
import typing as t
from pathlib import Path

import pytest

from ansible_collections.fleetpatch.rollout.plugins.module_utils._fetch import shown_url
from ansible_collections.fleetpatch.rollout.plugins.module_utils._host import HostLayout, HostOps, ReleaseError
from ansible_collections.fleetpatch.rollout.plugins.module_utils._io import sha256_file
from ansible_collections.fleetpatch.rollout.plugins.module_utils._release import fetch_artifact

BODY = b"".join(hashlib.sha256(index.to_bytes(4, "big")).digest() for index in range(4096))  # 128 KiB
DIGEST = hashlib.sha256(BODY).hexdigest()


class Misbehaving:
    """Loopback HTTP server whose paths misbehave: /endless (no size, never ends), /trickle (1 byte/s), /slow (a big
    declared body at ~64 KiB/s), /stall (headers, then nothing), /huge (announces 10 GiB), /ok (BODY)."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.sent: dict[str, int] = {}
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args: t.Any) -> None:
                pass

            def _send(self, data: bytes) -> bool:
                try:
                    self.wfile.write(data)
                    self.wfile.flush()
                except OSError:
                    return False
                owner.sent[self.path.split("?")[0]] = owner.sent.get(self.path.split("?")[0], 0) + len(data)
                return True

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.split("?")[0]
                self.send_response(200)
                if path == "/huge":
                    self.send_header("Content-Length", str(10 * 1024 ** 3))
                elif path in ("/ok", "/slow"):
                    self.send_header("Content-Length", str(len(BODY) if path == "/ok" else 64 * len(BODY)))
                self.end_headers()
                if path == "/ok":
                    self._send(BODY)
                elif path == "/endless":
                    while not owner.stop.is_set() and self._send(b"x" * 65536):
                        pass
                elif path == "/trickle":
                    while not owner.stop.is_set() and self._send(b"x"):
                        owner.stop.wait(1.0)
                elif path == "/slow":
                    for _chunk in range(64 * 32):
                        if owner.stop.is_set() or not self._send(BODY[:4096]):
                            break
                        owner.stop.wait(1 / 16)
                elif path == "/stall":
                    owner.stop.wait(30)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str, *, userinfo: str = "") -> str:
        return f"http://{userinfo}127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> t.Iterator[Misbehaving]:
    running = Misbehaving()
    yield running
    running.close()


@pytest.fixture
def layout(tmp_path: Path) -> HostLayout:
    return HostLayout(str(tmp_path / "host"), "myapp")


def cache_entries(layout: HostLayout) -> list[str]:
    return sorted(os.listdir(layout.cache_dir)) if os.path.isdir(layout.cache_dir) else []


def fetch(layout: HostLayout, url: str, *, sha256: str = DIGEST, size: int | None = None, **limits: t.Any) -> float:
    started = time.monotonic()
    fetch_artifact(HostOps(), url=url, dest=layout.cache_path(sha256), sha256=sha256, size=size, timeout=5, **limits)
    return time.monotonic() - started


def test_a_good_download_lands_verified_and_alone(server: Misbehaving, layout: HostLayout) -> None:
    fetch(layout, server.url("/ok"), size=len(BODY))
    assert cache_entries(layout) == [DIGEST] and sha256_file(layout.cache_path(DIGEST)) == DIGEST
    # no declared size: the body's end is the end, within the cap
    os.unlink(layout.cache_path(DIGEST))
    fetch(layout, server.url("/ok"), max_bytes=len(BODY))
    assert cache_entries(layout) == [DIGEST]


def test_an_endless_body_without_a_size_is_stopped_at_max_bytes(server: Misbehaving, layout: HostLayout) -> None:
    cap = 1024 * 1024
    with pytest.raises(ReleaseError) as exc:
        fetch(layout, server.url("/endless"), max_bytes=cap)
    assert str(exc.value) == (f"artifact transfer from {server.url('/endless')} stopped: more than max_artifact_bytes "
                              f"{cap} bytes and the origin is still sending")
    assert cache_entries(layout) == []  # the partial file is gone
    # the client hung up: the server cannot send on (what it sent beyond the cap sat in socket buffers)
    time.sleep(0.3)
    sent = server.sent["/endless"]
    time.sleep(0.3)
    assert server.sent["/endless"] == sent


def test_an_origin_announcing_more_than_the_cap_is_refused_before_a_byte(server: Misbehaving, layout: HostLayout) -> None:
    with pytest.raises(ReleaseError) as exc:
        fetch(layout, server.url("/huge"), max_bytes=1024)
    assert str(exc.value) == (f"artifact transfer from {server.url('/huge')} stopped: announces {10 * 1024 ** 3} bytes, "
                              "more than max_artifact_bytes 1024")
    assert cache_entries(layout) == []


def test_one_byte_per_second_fails_on_min_throughput_within_the_window(server: Misbehaving, layout: HostLayout) -> None:
    with pytest.raises(ReleaseError) as exc:
        fetch(layout, server.url("/trickle"), min_throughput=1024, throughput_window=1.5, max_time=60)
    message = str(exc.value)
    assert message.startswith(f"artifact transfer from {server.url('/trickle')} stopped: slower than 1024 B/s for 1.5 s ("), message
    assert cache_entries(layout) == []


def test_a_stalled_origin_fails_within_the_window(server: Misbehaving, layout: HostLayout) -> None:
    started = time.monotonic()
    with pytest.raises(ReleaseError) as exc:
        fetch(layout, server.url("/stall"), min_throughput=1024, throughput_window=1.0, max_time=60)
    assert time.monotonic() - started < 3
    assert f"artifact transfer from {server.url('/stall')} stopped: slower than 1024 B/s for 1 s (0 B/s" in str(exc.value)
    assert cache_entries(layout) == []


def test_the_deadline_stops_a_slow_but_steady_origin(server: Misbehaving, layout: HostLayout) -> None:
    started = time.monotonic()
    with pytest.raises(ReleaseError) as exc:
        fetch(layout, server.url("/slow"), size=64 * len(BODY), max_time=1.0, min_throughput=0)
    assert time.monotonic() - started < 2.5
    assert str(exc.value).startswith(f"artifact transfer from {server.url('/slow')} stopped: max_time 1 s reached after ")
    assert cache_entries(layout) == []


def test_a_wrong_digest_leaves_nothing_in_the_cache(server: Misbehaving, layout: HostLayout) -> None:
    wrong = "0" * 64
    with pytest.raises(ReleaseError) as exc:
        fetch(layout, server.url("/ok"), sha256=wrong, size=len(BODY))
    assert str(exc.value) == (f"artifact from {server.url('/ok')} served {len(BODY)} bytes with sha256 {DIGEST}, expected {wrong} "
                              "(corrupt); the bytes were discarded; it was not cached")
    assert cache_entries(layout) == []


def test_no_message_shows_url_credentials(server: Misbehaving, layout: HostLayout) -> None:
    url = server.url("/endless", userinfo="deploy:hunter2-secret@") + "?token=tok-secret&x=1"
    with pytest.raises(ReleaseError) as exc:
        fetch(layout, url, max_bytes=65536)
    message = str(exc.value)
    assert "hunter2" not in message and "tok-secret" not in message and "deploy" not in message
    assert f"http://***@127.0.0.1:{server.httpd.server_address[1]}/endless?***" in message


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:pass@artifacts.example/a/b.tgz", "https://***@artifacts.example/a/b.tgz"),
        ("https://token@artifacts.example:8443/b.tgz?X-Amz-Signature=abc#frag", "https://***@artifacts.example:8443/b.tgz?***"),
        ("http://127.0.0.1:8080/cache/sha256/ab", "http://127.0.0.1:8080/cache/sha256/ab"),
        ("file:///srv/a.tgz", "file:///srv/a.tgz"),
        ("http://[::1", "<unparsable url>"),
    ],
)
def test_shown_url(url: str, shown: str) -> None:
    assert shown_url(url) == shown


def test_stale_partials_of_earlier_releases_are_removed(server: Misbehaving, layout: HostLayout) -> None:
    os.makedirs(layout.cache_dir)
    for name in (f".{DIGEST}.abc123.part", f".{DIGEST}.part"):
        Path(layout.cache_dir, name).write_bytes(b"junk")
    fetch(layout, server.url("/ok"), size=len(BODY))
    assert cache_entries(layout) == [DIGEST]
