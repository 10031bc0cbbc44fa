from __future__ import annotations

import errno
import hashlib
import http.server
import json
import os
import re
import shutil
import subprocess
import tarfile
import threading
import time
import typing as t
from pathlib import Path

import pytest

from ansible_collections.fleetpatch.demo.plugins.module_utils import _demo_fleet
from ansible_collections.fleetpatch.rollout.plugins.module_utils import _bundle, _fetch, _prestage
from ansible_collections.fleetpatch.rollout.plugins.module_utils._bundle import (
    BuildInfo,
    scan_tree,
    sign_file,
    write_delta_bundle,
    write_full_bundle,
)
from ansible_collections.fleetpatch.rollout.plugins.module_utils._io import sha256_file
from ansible_collections.fleetpatch.rollout.plugins.module_utils._prestage import (
    StageError,
    StageResult,
    build_stage_request,
    cached_entries,
    meta_path,
    plan_retention,
    readiness_report,
    render_report,
    run_stage,
)
from ansible_collections.fleetpatch.rollout.plugins.module_utils._release import (
    ApplyResult,
    HostLayout,
    HostOps,
    ReleaseError,
    build_request,
    read_release_metadata,
    record_install,
    run_apply,
    switch_current,
    unpack_release,
)

ZSTD = shutil.which("zstd")
SSH_KEYGEN = shutil.which("ssh-keygen")
RANGE = re.compile(r"^bytes=(\d+)-$")


# ------------------------------------------------------------------------------------------ test server


class Route:
    """What the test server does for one path."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.cut_after: int | None = None  # drop the connection after this many body bytes...
        self.cuts = 0  # ...this many times
        self.ignore_range = False
        self.statuses: list[int] = []  # answer these statuses first, one per request
        self.delay = 0.0  # seconds between chunks
        self.requests: list[str | None] = []  # the Range header of every request


class Server:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: t.Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                route = server.routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                header = self.headers.get("Range")
                route.requests.append(header)
                if route.statuses:
                    self.send_error(route.statuses.pop(0))
                    return
                start = 0
                match = RANGE.match(header or "")
                if match and not route.ignore_range:
                    start = int(match.group(1))
                    if start >= len(route.data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(route.data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(route.data) - 1}/{len(route.data)}")
                else:
                    self.send_response(200)
                body = route.data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if route.cut_after is not None and route.cuts > 0:
                    route.cuts -= 1
                    self.wfile.write(body[: route.cut_after])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                for offset in range(0, len(body), 16384):
                    if route.delay:
                        time.sleep(route.delay)
                    self.wfile.write(body[offset:offset + 16384])

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def add(self, path: str, data: bytes) -> Route:
        self.routes[path] = Route(data)
        return self.routes[path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> t.Iterator[Server]:
    running = Server()
    yield running
    running.close()


class Ops(HostOps):
    def __init__(self, *, check_mode: bool = False) -> None:
        super().__init__(check_mode=check_mode)
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


PAYLOAD = b"".join(hashlib.sha256(index.to_bytes(4, "big")).digest() for index in range(8192))  # 256 KiB
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


def params(**overrides: t.Any) -> dict[str, t.Any]:
    values: dict[str, t.Any] = {"service": "myapp", "version": "1.0.1", "sha256": DIGEST, "size": len(PAYLOAD),
                                "name": "myapp-1.0.1.tar.gz", "retries": 2, "backoff": 0.5, "timeout": 5, "keep": 3}
    values.update(overrides)
    return values


def stage(root: Path, ops: HostOps | None = None, *, zstd: t.Any = False, **overrides: t.Any) -> dict[str, t.Any]:
    layout = HostLayout(str(root), "myapp")
    ops = ops or Ops()
    result = StageResult()
    try:
        run_stage(layout, build_stage_request(params(**overrides)), ops, zstd=zstd, result=result)
    except ReleaseError as exc:
        return dict(result.as_dict(check_mode=ops.check_mode), failed=True, msg=str(exc))
    return result.as_dict(check_mode=ops.check_mode)


def leftovers(root: Path) -> list[str]:
    cache = root / "cache" / "sha256"
    return sorted(name for name in os.listdir(cache) if name.startswith(".")) if cache.is_dir() else []


# ------------------------------------------------------------------------------------------ transfers


def test_edge_first_then_a_second_run_moves_nothing(tmp_path: Path, server: Server) -> None:
    edge = server.add(f"/cache/sha256/{DIGEST}", PAYLOAD)
    origin = server.add("/artifacts/myapp-1.0.1.tar.gz", PAYLOAD)
    first = stage(tmp_path, edge_url=server.url("/cache/sha256/"), url=server.url("/artifacts/myapp-1.0.1.tar.gz"))
    assert first["changed"] and first["ready"]
    assert first["transferred_bytes"] == len(PAYLOAD) and first["bytes_by_source"] == {"edge": len(PAYLOAD)}
    assert first["artifacts"][0]["source"] == "edge" and first["artifacts"][0]["action"] == "download"
    assert sha256_file(str(tmp_path / "cache" / "sha256" / DIGEST)) == DIGEST
    meta = json.loads((tmp_path / "cache" / "meta" / f"{DIGEST}.json").read_text())
    assert {key: meta[key] for key in ("service", "version", "kind", "source", "size")} == {
        "service": "myapp", "version": "1.0.1", "kind": "full", "source": "edge", "size": len(PAYLOAD)}
    assert origin.requests == []
    second = stage(tmp_path, edge_url=server.url("/cache/sha256/"), url=server.url("/artifacts/myapp-1.0.1.tar.gz"))
    assert not second["changed"] and second["ready"]
    assert second["transferred_bytes"] == 0 and second["actions"] == []
    assert len(edge.requests) == 1
    assert leftovers(tmp_path) == []


def test_corrupt_edge_bytes_are_discarded_and_the_origin_delivers(tmp_path: Path, server: Server) -> None:
    server.add(f"/cache/sha256/{DIGEST}", _demo_fleet.corrupt_bytes(PAYLOAD))
    server.add("/o", PAYLOAD)
    result = stage(tmp_path, edge_url=server.url("/cache/sha256"), url=server.url("/o"))
    entry = result["artifacts"][0]
    assert entry["source"] == "origin"
    assert any("edge: served" in error and "(corrupt); the bytes were discarded" in error for error in entry["errors"])
    assert result["bytes_by_source"] == {"edge": len(PAYLOAD), "origin": len(PAYLOAD)}
    assert sha256_file(str(tmp_path / "cache" / "sha256" / DIGEST)) == DIGEST
    assert leftovers(tmp_path) == []


def test_a_cut_transfer_resumes_with_a_range_request(tmp_path: Path, server: Server) -> None:
    route = server.add(f"/cache/sha256/{DIGEST}", PAYLOAD)
    route.cut_after, route.cuts = 65536, 1
    ops = Ops()
    result = stage(tmp_path, ops, edge_url=server.url("/cache/sha256/"))
    entry = result["artifacts"][0]
    assert entry["resumed"] is True and entry["restarts"] == 0
    assert entry["bytes"] == len(PAYLOAD)  # nothing downloaded twice
    assert route.requests == [None, "bytes=65536-"]
    assert ops.slept == [0.5]
    assert sha256_file(str(tmp_path / "cache" / "sha256" / DIGEST)) == DIGEST


def test_a_server_ignoring_range_starts_again_from_byte_zero(tmp_path: Path, server: Server) -> None:
    route = server.add("/o", PAYLOAD)
    route.cut_after, route.cuts, route.ignore_range = 1000, 1, True
    result = stage(tmp_path, url=server.url("/o"))
    entry = result["artifacts"][0]
    assert entry["restarts"] == 1 and entry["resumed"] is False
    assert route.requests == [None, "bytes=1000-"]
    assert sha256_file(str(tmp_path / "cache" / "sha256" / DIGEST)) == DIGEST


def test_retries_back_off_exponentially_on_5xx(tmp_path: Path, server: Server) -> None:
    route = server.add("/o", PAYLOAD)
    route.statuses = [503, 502]
    ops = Ops()
    result = stage(tmp_path, ops, url=server.url("/o"), backoff=1.0, backoff_max=1.5, retries=3)
    assert result["ready"] and ops.slept == [1.0, 1.5]
    assert result["artifacts"][0]["attempts"] == 3


def test_a_source_with_another_size_is_skipped_before_any_byte(tmp_path: Path, server: Server) -> None:
    server.add(f"/cache/sha256/{DIGEST}", PAYLOAD + b"trailing")
    server.add("/o", PAYLOAD)
    result = stage(tmp_path, edge_url=server.url("/cache/sha256/"), url=server.url("/o"))
    assert result["bytes_by_source"] == {"origin": len(PAYLOAD)}
    assert any(f"serves {len(PAYLOAD) + 8} bytes, the declared size is {len(PAYLOAD)}" in error
               for error in result["artifacts"][0]["errors"])


def test_every_source_failing_is_a_clear_failure_that_keeps_the_partial_for_later(tmp_path: Path, server: Server) -> None:
    route = server.add("/o", PAYLOAD)
    route.cut_after, route.cuts = 4096, 10
    result = stage(tmp_path, edge_url=server.url("/missing/"), url=server.url("/o"), retries=1)
    assert result["failed"] and not result["ready"]
    assert "could not stage full artifact" in result["msg"]
    assert "edge: HTTP 404" in result["msg"]
    assert f"8192 bytes kept in {tmp_path}/cache/sha256/.{DIGEST}.part to resume from" in result["msg"]
    assert not (tmp_path / "cache" / "sha256" / DIGEST).exists()
    # the next run resumes where this one stopped
    route.cuts = 0
    again = stage(tmp_path, url=server.url("/o"))
    assert again["ready"] and again["artifacts"][0]["resumed"] and again["transferred_bytes"] == len(PAYLOAD) - 8192
    assert route.requests[-1] == "bytes=8192-"


def test_not_enough_free_space_fails_before_a_byte_is_written(tmp_path: Path, server: Server, monkeypatch) -> None:
    route = server.add("/o", PAYLOAD)

    def full(directory: str, needed: int, *, what: str) -> None:
        raise ReleaseError(f"not enough free space in {directory} to {what}: need {needed} bytes, 0 available")

    monkeypatch.setattr(_fetch, "ensure_free_space", full)
    result = stage(tmp_path, url=server.url("/o"))
    assert result["failed"] and "not enough free space" in result["msg"]
    assert route.requests == []
    assert leftovers(tmp_path) == [] and not (tmp_path / "cache" / "sha256" / DIGEST).exists()


def test_a_disk_filling_up_mid_transfer_leaves_no_partial_file(tmp_path: Path, server: Server, monkeypatch) -> None:
    server.add("/o", PAYLOAD)
    real_write = os.write
    calls = []

    def write(fd: int, data: t.Any) -> int:
        calls.append(len(data))
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data[:1000])

    monkeypatch.setattr(_fetch.os, "write", write)
    result = stage(tmp_path, url=server.url("/o"))
    monkeypatch.undo()
    assert result["failed"] and "the disk is full; the partial download was removed" in result["msg"]
    assert leftovers(tmp_path) == [] and not (tmp_path / "cache" / "sha256" / DIGEST).exists()


def test_a_source_below_min_throughput_is_left_for_the_next(tmp_path: Path, server: Server) -> None:
    slow = server.add(f"/cache/sha256/{DIGEST}", PAYLOAD)
    slow.delay = 0.05
    server.add("/o", PAYLOAD)
    result = stage(tmp_path, edge_url=server.url("/cache/sha256/"), url=server.url("/o"),
                   min_throughput=10_000_000, throughput_window=0.2)
    entry = result["artifacts"][0]
    assert entry["source"] == "origin"
    shown = server.url("/cache/sha256/") + DIGEST
    assert any(f"edge: artifact transfer from {shown} stopped: slower than 10000000 B/s for 0.2 s" in error
               for error in entry["errors"]), entry["errors"]
    assert leftovers(tmp_path) == []


def test_max_time_gives_up(tmp_path: Path, server: Server) -> None:
    slow = server.add("/o", PAYLOAD)
    slow.delay = 0.05
    result = stage(tmp_path, url=server.url("/o"), max_time=0.2)
    assert result["failed"] and f"artifact transfer from {server.url('/o')} stopped: max_time 0.2 s reached" in result["msg"]
    assert not (tmp_path / "cache" / "sha256" / DIGEST).exists()


def test_a_corrupt_cached_copy_is_replaced(tmp_path: Path, server: Server) -> None:
    server.add("/o", PAYLOAD)
    stage(tmp_path, url=server.url("/o"))
    final = tmp_path / "cache" / "sha256" / DIGEST
    final.write_bytes(_demo_fleet.corrupt_bytes(PAYLOAD))
    ops = Ops()
    result = stage(tmp_path, ops, url=server.url("/o"))
    assert result["transferred_bytes"] == len(PAYLOAD)
    assert any("does not match its digest" in warning for warning in ops.warnings)
    assert sha256_file(str(final)) == DIGEST


def test_file_urls_are_sources_too(tmp_path: Path) -> None:
    source = tmp_path / "origin.bin"
    source.write_bytes(PAYLOAD)
    result = stage(tmp_path / "host", url=f"file://{source}")
    assert result["ready"] and result["bytes_by_source"] == {"origin": len(PAYLOAD)}


def test_check_mode_downloads_nothing(tmp_path: Path, server: Server) -> None:
    route = server.add("/o", PAYLOAD)
    result = stage(tmp_path, Ops(check_mode=True), url=server.url("/o"))
    assert result["changed"] and result["actions"] == [f"download full {DIGEST[:12]} from origin"]
    assert route.requests == [] and not (tmp_path / "cache" / "sha256" / DIGEST).exists()


# ------------------------------------------------------------------------------------------ verification


@pytest.fixture
def signers(tmp_path: Path) -> dict[str, str]:
    if SSH_KEYGEN is None:
        pytest.skip("ssh-keygen is not installed")
    keys = {}
    for name in ("builder", "rogue"):
        subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(tmp_path / name)], check=True)
        keys[name] = str(tmp_path / name)
    keys["allowed"] = f"builder@fleetpatch {(tmp_path / 'builder.pub').read_text()}"
    return keys


def test_a_good_signature_is_verified_once_and_recorded(tmp_path: Path, server: Server, signers: dict[str, str], monkeypatch) -> None:
    server.add("/o", PAYLOAD)
    payload = tmp_path / "payload"
    payload.write_bytes(PAYLOAD)
    signature = sign_file(str(payload), key=signers["builder"])
    result = stage(tmp_path / "host", url=server.url("/o"), signature=signature, allowed_signers=signers["allowed"])
    assert result["ready"]
    meta = json.loads((tmp_path / "host" / "cache" / "meta" / f"{DIGEST}.json").read_text())
    assert meta["signature"]["principal"] == "builder@fleetpatch"
    calls = []
    monkeypatch.setattr(_bundle, "verify_signature", lambda *a, **k: calls.append(a) or "x")
    again = stage(tmp_path / "host", url=server.url("/o"), signature=signature, allowed_signers=signers["allowed"])
    assert again["ready"] and not again["changed"] and calls == []


def test_a_wrong_signature_is_refused_and_nothing_is_cached(tmp_path: Path, server: Server, signers: dict[str, str]) -> None:
    server.add("/o", PAYLOAD)
    payload = tmp_path / "payload"
    payload.write_bytes(PAYLOAD)
    signature = sign_file(str(payload), key=signers["rogue"])
    result = stage(tmp_path / "host", url=server.url("/o"), signature=signature, allowed_signers=signers["allowed"])
    assert result["failed"] and not result["ready"]
    assert "has the right digest but is refused" in result["msg"] and "which is not in allowed_signers" in result["msg"]
    assert leftovers(tmp_path / "host") == []
    assert not (tmp_path / "host" / "cache" / "sha256" / DIGEST).exists()


def test_require_signature_refuses_an_unsigned_artifact(tmp_path: Path, server: Server) -> None:
    server.add("/o", PAYLOAD)
    result = stage(tmp_path, url=server.url("/o"), require_signature=True, allowed_signers="x ssh-ed25519 AAAA")
    assert result["failed"] and "has no signature and require_signature is set" in result["msg"]


def test_a_malformed_bundle_with_the_right_digest_is_not_cached(tmp_path: Path, server: Server) -> None:
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        data = json.dumps({"format": "fleetpatch-bundle"}).encode()
        info = tarfile.TarInfo("fleetpatch-bundle.json")
        info.size = len(data)
        tar.addfile(info, __import__("io").BytesIO(data))
    content = evil.read_bytes()
    server.add("/o", content)
    result = stage(tmp_path / "host", url=server.url("/o"), sha256=hashlib.sha256(content).hexdigest(), size=len(content))
    assert result["failed"] and "refusing bundle" in result["msg"]
    assert os.listdir(tmp_path / "host" / "cache" / "sha256") == []


# ------------------------------------------------------------------------------------------ deltas


def release_tree(root: Path, version: str, change: bytes = b"") -> Path:
    blob = bytearray(PAYLOAD)
    blob[100:100 + len(change)] = change
    (root / "lib").mkdir(parents=True)
    (root / "VERSION").write_text(f"{version}\n")
    (root / "lib" / "blob.bin").write_bytes(bytes(blob))
    return root


@pytest.fixture
def bundles(tmp_path: Path, server: Server) -> dict[str, t.Any]:
    base = release_tree(tmp_path / "src-base", "1.0.0")
    new = release_tree(tmp_path / "src-new", "1.0.1", b"PATCH")
    info = BuildInfo(patch_id="FP-1", service="myapp", target_version="1.0.1", base_version="1.0.0")
    full, delta = tmp_path / "full.tar.gz", tmp_path / "delta.tar.gz"
    write_full_bundle(scan_tree(str(new)), info, str(full), mtime=0)
    write_delta_bundle(scan_tree(str(new)), scan_tree(str(base)), info, str(delta), mtime=0,
                       full_sha256=sha256_file(str(full)), full_size=full.stat().st_size, zstd=ZSTD)
    base_tar = tmp_path / "base.tar.gz"
    with tarfile.open(base_tar, "w:gz") as tar:
        tar.add(base, arcname=".")
    full_route = server.add("/full", full.read_bytes())
    delta_route = server.add("/delta", delta.read_bytes())
    return {
        "base_tar": base_tar, "full_route": full_route, "delta_route": delta_route,
        "full": {"sha256": sha256_file(str(full)), "size": full.stat().st_size, "url": server.url("/full")},
        "delta": {"sha256": sha256_file(str(delta)), "size": delta.stat().st_size, "base_version": "1.0.0",
                  "url": server.url("/delta")},
    }


def host_on_base(root: Path, bundles: dict[str, t.Any]) -> HostLayout:
    layout = HostLayout(str(root), "myapp")
    digest = sha256_file(str(bundles["base_tar"]))
    unpack_release(layout, version="1.0.0", artifact_path=str(bundles["base_tar"]), sha256=digest)
    os.makedirs(layout.apps_dir, exist_ok=True)
    switch_current(layout, "1.0.0")
    record_install(layout, version="1.0.0", sha256=digest, patch_id=None, previous=None, action="install")
    return layout


def delta_params(bundles: dict[str, t.Any], **extra: t.Any) -> dict[str, t.Any]:
    return dict(sha256=bundles["full"]["sha256"], size=bundles["full"]["size"], url=bundles["full"]["url"],
                delta=bundles["delta"], **extra)


@pytest.mark.skipif(ZSTD is None, reason="zstd is not installed")
def test_a_node_on_the_base_stages_the_delta_and_the_apply_builds_the_full_tree(tmp_path: Path, bundles: dict[str, t.Any]) -> None:
    layout = host_on_base(tmp_path / "host", bundles)
    result = stage(tmp_path / "host", zstd=ZSTD, **delta_params(bundles))
    assert result["staged"]["kind"] == "delta" and result["fallback_reason"] is None
    assert result["transferred_bytes"] == bundles["delta"]["size"] < bundles["full"]["size"]
    assert bundles["full_route"].requests == []
    request = build_request({"version": "1.0.1", "sha256": bundles["full"]["sha256"], "delta": bundles["delta"] | {"url": None}})
    applied = run_apply(layout, request, HostOps(), ApplyResult())
    assert applied.actions[0] == "unpack 1.0.1 from the delta bundle"
    metadata = read_release_metadata(layout.release_path("1.0.1"))
    assert metadata["artifact_sha256"] == bundles["full"]["sha256"]
    assert metadata["bundle"]["kind"] == "delta"
    assert (Path(layout.release_path("1.0.1")) / "lib" / "blob.bin").read_bytes()[100:105] == b"PATCH"


@pytest.mark.skipif(ZSTD is None, reason="zstd is not installed")
def test_the_apply_falls_back_to_the_full_artifact_when_the_base_changed(tmp_path: Path, bundles: dict[str, t.Any]) -> None:
    layout = host_on_base(tmp_path / "host", bundles)
    stage(tmp_path / "host", zstd=ZSTD, **delta_params(bundles))
    blob = Path(layout.release_path("1.0.0")) / "lib" / "blob.bin"
    blob.chmod(0o644)
    blob.write_bytes(b"locally changed")
    ops = HostOps()
    request = build_request({"version": "1.0.1", "sha256": bundles["full"]["sha256"], "artifact_url": bundles["full"]["url"],
                             "delta": bundles["delta"] | {"url": None}, "require_rollback_point": False})
    applied = run_apply(layout, request, ops, ApplyResult())
    assert "unpack 1.0.1 from the full artifact (fallback)" in applied.actions
    assert any("falling back to the full artifact" in warning for warning in ops.warnings)
    assert read_release_metadata(layout.release_path("1.0.1"))["bundle"]["kind"] == "full"


def test_without_zstd_the_full_artifact_is_staged_and_says_why(tmp_path: Path, bundles: dict[str, t.Any]) -> None:
    host_on_base(tmp_path / "host", bundles)
    result = stage(tmp_path / "host", zstd=False, **delta_params(bundles))
    assert result["staged"]["kind"] == "full"
    assert result["fallback_reason"] == "zstd is not installed on this host"


def test_a_host_not_on_the_base_gets_the_full_artifact(tmp_path: Path, bundles: dict[str, t.Any]) -> None:
    result = stage(tmp_path / "host", zstd=ZSTD or "zstd", **delta_params(bundles))
    assert result["staged"]["kind"] == "full"
    assert result["fallback_reason"] == "the host runs nothing, the delta needs 1.0.0"


def test_an_edge_stages_both(tmp_path: Path, bundles: dict[str, t.Any]) -> None:
    result = stage(tmp_path / "edge", delta_mode="both", **delta_params(bundles))
    assert [entry["kind"] for entry in result["artifacts"]] == ["full", "delta"]
    assert result["transferred_bytes"] == bundles["full"]["size"] + bundles["delta"]["size"]


# ------------------------------------------------------------------------------------------ readiness, retention


def test_readiness_checks_without_transferring(tmp_path: Path, server: Server) -> None:
    route = server.add("/o", PAYLOAD)
    before = stage(tmp_path, url=server.url("/o"), state="verified")
    assert not before["ready"] and not before["changed"]
    assert before["reason"] == f"not staged: full {DIGEST[:12]} is not cached"
    assert route.requests == []
    stage(tmp_path, url=server.url("/o"))
    after = stage(tmp_path, url=server.url("/o"), state="verified")
    assert after["ready"] and after["staged"]["sha256"] == DIGEST and not after["changed"]


def test_a_host_already_on_the_target_is_ready(tmp_path: Path) -> None:
    layout = HostLayout(str(tmp_path), "myapp")
    os.makedirs(layout.release_path("1.0.1"))
    switch_current(layout, "1.0.1")
    result = stage(tmp_path, state="verified")
    assert result["ready"] and result["staged"] == {"installed": "1.0.1", "path": layout.release_path("1.0.1")}


def entry(version: str, sha: str, staged_at: str = "2026-01-01T00:00:00Z", **extra: t.Any) -> dict[str, t.Any]:
    return dict({"version": version, "sha256": sha, "staged_at": staged_at, "kind": "full"}, **extra)


@pytest.mark.parametrize(
    ("keep", "protect_versions", "protect_digests", "removed"),
    [
        (2, [], [], ["a", "b"]),
        (2, ["0.9.0"], [], ["b"]),
        (2, [], ["a"], ["b"]),
        (5, [], [], []),
        (0, [], [], []),
        (1, ["1.1.0"], [], ["a", "b", "c"]),
    ],
)
def test_plan_retention(keep: int, protect_versions: list[str], protect_digests: list[str], removed: list[str]) -> None:
    entries = [entry("0.9.0", "a"), entry("0.10.0", "b"), entry("1.0.0", "c"), entry("1.1.0", "d"), entry("1.1.0", "e", kind="delta")]
    doomed = plan_retention(entries, keep=keep, protect_versions=protect_versions, protect_digests=protect_digests)
    assert [item["sha256"] for item in doomed] == removed


def seed(root: Path, version: str, content: bytes) -> str:
    layout = HostLayout(str(root), "myapp")
    digest = hashlib.sha256(content).hexdigest()
    os.makedirs(layout.cache_dir, exist_ok=True)
    os.makedirs(os.path.dirname(meta_path(layout, digest)), exist_ok=True)
    Path(layout.cache_path(digest)).write_bytes(content)
    Path(meta_path(layout, digest)).write_text(json.dumps(entry(version, digest, service="myapp")))
    return digest


def test_retention_keeps_the_newest_and_never_the_rollback_point(tmp_path: Path, server: Server) -> None:
    server.add("/o", PAYLOAD)
    old = {version: seed(tmp_path, version, version.encode()) for version in ("0.8.0", "0.9.0", "1.0.0")}
    layout = HostLayout(str(tmp_path), "myapp")
    # the host runs 0.8.0 (oldest): its artifact stays whatever keep says
    os.makedirs(layout.release_path("0.8.0"))
    switch_current(layout, "0.8.0")
    preview = stage(tmp_path, Ops(check_mode=True), url=server.url("/o"), keep=1)
    assert [item["version"] for item in preview["would_remove"]] == ["0.9.0", "1.0.0"]
    assert sorted(item["sha256"] for item in cached_entries(layout)) == sorted(old.values())
    result = stage(tmp_path, url=server.url("/o"), keep=1)
    assert [item["sha256"] for item in result["removed"]] == [old["0.9.0"], old["1.0.0"]]
    assert sorted(item["version"] for item in cached_entries(layout)) == ["0.8.0", "1.0.1"]
    assert not os.path.exists(layout.cache_path(old["1.0.0"])) and not os.path.exists(meta_path(layout, old["1.0.0"]))


def test_the_cache_lock_refuses_a_second_stager(tmp_path: Path, monkeypatch) -> None:
    import fcntl

    layout = HostLayout(str(tmp_path), "myapp")
    os.makedirs(layout.cache_dir)
    fd = os.open(str(tmp_path / "cache" / ".prestage.lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(StageError, match="another prestage holds"):
            with _prestage.cache_lock(layout, Ops(), timeout=0):
                pass
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------ report


def test_readiness_report_counts_per_region_and_says_why() -> None:
    hosts = {
        "a1": {"region": "eu", "result": {"ready": True, "bytes_by_source": {"edge": 10}, "staged": {"kind": "delta"}}},
        "a2": {"region": "eu", "result": {"ready": False, "failed": True, "msg": "not enough free space"}},
        "b1": {"region": "us", "result": {"ready": True, "bytes_by_source": {"edge": 5, "origin": 10}, "staged": {"kind": "full"},
                                          "fallback_reason": "zstd is not installed on this host"}},
        "b2": {"region": "us", "result": None},
        "b3": {"region": "us", "result": {"unreachable": True, "msg": "ssh: connect refused"}},
    }
    report = readiness_report(hosts)
    assert report["percent"] == 40.0 and report["ready"] == 2 and report["hosts"] == 5
    assert report["regions"]["eu"] == {"hosts": 2, "ready": 1, "percent": 50.0, "not_ready": ["a2"]}
    assert report["regions"]["us"]["percent"] == 33.3
    assert report["not_ready"] == {"a2": "not enough free space", "b2": "no prestage result (unreachable or not run)",
                                   "b3": "ssh: connect refused"}
    assert report["bytes_by_source"] == {"edge": 15, "origin": 10}
    assert report["kinds"] == {"delta": 1, "full": 1}
    assert report["fallbacks"] == {"b1": "zstd is not installed on this host"}
    assert render_report(report)[:3] == ["staged 2/5 hosts (40.0%)", "  eu: 1/2 (50.0%) not ready: a2",
                                         "  us: 1/3 (33.3%) not ready: b2, b3"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"size": None}, "artifact size is required"),
        ({"url": "ftp://x"}, "artifact url 'ftp://x' must start with one of"),
        ({"edge_url": "edge:8080"}, "edge_url 'edge:8080' must start with one of"),
        ({"delta": {"sha256": DIGEST, "size": 1, "base_version": "../x"}}, "delta base_version '../x' is not valid"),
        ({"retries": -1}, "retries must be at least 0, got -1"),
    ],
)
def test_stage_request_validation(overrides: dict[str, t.Any], message: str) -> None:
    with pytest.raises(ReleaseError) as exc:
        build_stage_request(params(**overrides))
    assert str(exc.value).startswith(message)


def test_stage_request_carries_the_download_settings_without_showing_headers() -> None:
    request = build_stage_request(params(url_headers={"Authorization": "Bearer s3cret"}, min_throughput=512, max_time=60))
    policy = _fetch.FetchPolicy(**request.fetch_settings)
    assert (policy.timeout, policy.retries, policy.backoff, policy.min_throughput, policy.max_time) == (5, 2, 0.5, 512, 60)
    assert policy.headers == {"Authorization": "Bearer s3cret"}
    assert "s3cret" not in repr(request) and "s3cret" not in repr(policy)
    assert _fetch.FetchPolicy(**build_stage_request(params(timeout=None, retries=None, backoff=None)).fetch_settings) == \
        _fetch.FetchPolicy(timeout=30, retries=3, backoff=1.0)


def test_an_already_staged_host_does_not_load_the_transfer_code() -> None:
    """_prestage imports _fetch, _bundle and _release only inside the functions that download or verify (a module
    execution compiles every module it imports); _fetch never imports _prestage, not even for type checking, so the
    two form no cycle."""
    import ast

    def modules(tree: ast.AST) -> set[str]:
        return {node.module.rsplit(".", 1)[-1] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module} | {
            alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}

    prestage = ast.parse(Path(_prestage.__file__).read_text(encoding="utf-8"))
    type_checking = [node for node in prestage.body if isinstance(node, ast.If)]
    top_level = [node for node in prestage.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert top_level and all(ast.unparse(node.test) == "t.TYPE_CHECKING" for node in type_checking)
    assert not {"_fetch", "_bundle", "_release"} & modules(ast.Module(body=top_level, type_ignores=[]))
    assert "_prestage" not in modules(ast.parse(Path(_fetch.__file__).read_text(encoding="utf-8")))


def test_cut_transfer_is_an_edge_fault() -> None:
    layout = _demo_fleet.build_layout(regions=["eu-west"], tenants=["acme"], segments=["web"], environments=["prod"],
                                      hosts_per_cell=1, cidr="127.99.0.0/24")
    faults = _demo_fleet.validate_faults([{"kind": "cut_transfer", "after_bytes": 1024, "match": {"region": "eu-west"}}])
    assert _demo_fleet.resolve_faults(faults, layout.hosts) == {"edge-eu-west": {"cut_transfer": {"after_bytes": 1024, "times": 1}}}
    with pytest.raises(_demo_fleet.DemoFleetError, match="cut_transfer.*after_bytes is required"):
        _demo_fleet.validate_faults([{"kind": "cut_transfer", "match": {"region": "eu-west"}}])
    with pytest.raises(_demo_fleet.DemoFleetError, match="matches no edge"):
        _demo_fleet.resolve_faults(_demo_fleet.validate_faults(
            [{"kind": "cut_transfer", "after_bytes": 1, "match": {"tenant": "acme"}}]), layout.hosts)


def test_part_path_is_hidden_next_to_the_final_path(tmp_path: Path) -> None:
    layout = HostLayout(str(tmp_path), "myapp")
    assert layout.part_path(DIGEST) == f"{tmp_path}/cache/sha256/.{DIGEST}.part"
