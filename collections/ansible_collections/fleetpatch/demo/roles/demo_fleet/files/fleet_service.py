#!/usr/bin/env python
# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Supervisor of the fleetpatch demo fleet: one process that plays every demo host's service.

Each host listens on its own loopback address and port; the origin serves release artifacts; faults come
from ``faults.json``. One asyncio loop serves them all, so a thousand hosts cost a thousand listening
sockets and no threads. Control (restart, status, reload-faults) goes over a unix socket in ``run/``.

Standard library only: ``fleetpatch.demo.demo_fleet`` copies this file into ``<fleet dir>/bin/``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import hashlib
import json
import math
import os
import re
import resource
import select
import signal
import sys
import time
import typing as t
import urllib.parse

CONTROL_SOCKET = "control.sock"
RESTART_SECONDS = 0.05
FAULT_POLL_SECONDS = 1.0
IDLE_TIMEOUT_SECONDS = 15.0
MAX_HEADERS = 100
CHUNK = 256 * 1024
LATENCY_WINDOW = 2048
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
REASONS = {
    200: "OK",
    206: "Partial Content",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    416: "Range Not Satisfiable",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
# Copies of module_utils/_version.py and _demo_fleet.corrupt_bytes (this file must stay standalone);
# tests/unit/plugins/module_utils/test__demo_fleet.py keeps them equal.
_TOKEN = re.compile(r"\d+|[A-Za-z]+")
CORRUPT_STRIDE = 4099
CORRUPT_XOR = 0x5A


def version_key(version: str) -> tuple[t.Any, ...]:
    core = version.partition("+")[0]
    main, dash, pre = core.partition("-")
    parts = [(1, int(token)) if token.isdigit() else (0, token) for token in _TOKEN.findall(main)]
    pre_key: tuple[t.Any, ...] = (
        (1,) if not dash else (0, tuple((1, int(x)) if x.isdigit() else (0, x) for x in _TOKEN.findall(pre)))
    )
    return (tuple(parts), pre_key)


def compare_versions(left: str, right: str) -> int:
    a, b = version_key(left), version_key(right)
    return (a > b) - (a < b)


def corrupt_bytes(data: bytes) -> bytes:
    out = bytearray(data)
    for offset in range(0, len(out), CORRUPT_STRIDE):
        out[offset] ^= CORRUPT_XOR
    return bytes(out)


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def log(message: str) -> None:
    print(f"{now_iso()} fleet_service[{os.getpid()}] {message}", flush=True)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """(start, end) inclusive, "unsatisfiable", or None to serve the whole file (no or ignorable Range)."""
    if not header:
        return None
    match = RANGE_RE.match(header.strip())
    if not match:
        return None  # multi-range or other units: RFC 9110 allows ignoring Range
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        length = int(last)
        if length == 0 or size == 0:
            return "unsatisfiable"
        return (max(0, size - length), size - 1)
    start = int(first)
    if start >= size:
        return "unsatisfiable"
    end = int(last) if last else size - 1
    if end < start:
        return None
    return (start, min(end, size - 1))


class Response:
    def __init__(
        self,
        status: int,
        body: bytes = b"",
        *,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        file: tuple[str, int, int] | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers or {}
        self.file = file  # (path, offset, length) streamed instead of body
        self.cut_after: int | None = None  # fault cut_transfer: close the connection after this many body bytes

    @classmethod
    def json(cls, status: int, data: t.Any) -> Response:
        return cls(status, (json.dumps(data, sort_keys=True) + "\n").encode())

    @property
    def length(self) -> int:
        return self.file[2] if self.file else len(self.body)


def file_response(path: str, range_header: str | None, *, etag: str | None = None) -> Response:
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return Response.json(404, {"error": "not found"})
    headers = {"Accept-Ranges": "bytes"}
    if etag:
        headers["ETag"] = f'"{etag}"'
    wanted = parse_range(range_header, size)
    if wanted == "unsatisfiable":
        headers["Content-Range"] = f"bytes */{size}"
        return Response(416, b"", content_type="application/octet-stream", headers=headers)
    if wanted is None:
        return Response(200, content_type="application/octet-stream", headers=headers, file=(path, 0, size))
    start, end = wanted  # type: ignore[misc]
    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return Response(206, content_type="application/octet-stream", headers=headers, file=(path, start, end - start + 1))


class Metrics:
    def __init__(self) -> None:
        self.requests_total = 0
        self.errors_total = 0
        self.by_status: collections.Counter[int] = collections.Counter()
        self.latencies: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self.max_ms = 0.0
        self.bytes_total = 0  # response body bytes sent (for the origin: plus edge cache fills)
        self.correlation_ids: collections.Counter[str] = collections.Counter()  # X-Correlation-ID values seen (first 64)

    def record(self, status: int, latency_ms: float, body_bytes: int = 0) -> None:
        self.requests_total += 1
        self.bytes_total += body_bytes
        if status >= 500:
            self.errors_total += 1
        self.by_status[status] += 1
        self.latencies.append(latency_ms)
        self.max_ms = max(self.max_ms, latency_ms)

    def snapshot(self) -> dict[str, t.Any]:
        ordered = sorted(self.latencies)

        def quantile(q: float) -> float:
            if not ordered:
                return 0.0
            return round(ordered[min(len(ordered), max(1, math.ceil(q * len(ordered)))) - 1], 3)

        return {
            "requests_total": self.requests_total,
            "errors_total": self.errors_total,
            "bytes_sent_total": self.bytes_total,
            "correlation_ids": dict(self.correlation_ids),
            "by_status": {str(code): count for code, count in sorted(self.by_status.items())},
            "latency_ms": {
                "p50": quantile(0.50),
                "p95": quantile(0.95),
                "p99": quantile(0.99),
                "max": round(self.max_ms, 3),
            },
        }

    def prometheus(self, labels: str, extra: list[str]) -> bytes:
        snap = self.snapshot()
        lines = [
            "# HELP fleet_http_requests_total HTTP requests served.",
            "# TYPE fleet_http_requests_total counter",
            f"fleet_http_requests_total{{{labels}}} {snap['requests_total']}",
            "# HELP fleet_http_errors_total HTTP responses with a 5xx status.",
            "# TYPE fleet_http_errors_total counter",
            f"fleet_http_errors_total{{{labels}}} {snap['errors_total']}",
            "# HELP fleet_http_responses_total HTTP responses by status code.",
            "# TYPE fleet_http_responses_total counter",
        ]
        lines += [f'fleet_http_responses_total{{{labels},code="{code}"}} {count}' for code, count in snap["by_status"].items()]
        lines += [
            "# HELP fleet_http_request_latency_ms Request latency over the last requests.",
            "# TYPE fleet_http_request_latency_ms summary",
        ]
        for name, quantile in (("p50", "0.5"), ("p95", "0.95"), ("p99", "0.99")):
            lines.append(f'fleet_http_request_latency_ms{{{labels},quantile="{quantile}"}} {snap["latency_ms"][name]}')
        lines.append(f"fleet_http_request_latency_ms_max{{{labels}}} {snap['latency_ms']['max']}")
        return ("\n".join(lines + extra) + "\n").encode()


class Endpoint:
    """Something listening on one address:port (a demo host or the origin)."""

    name = ""
    address = ""
    port = 0

    def __init__(self) -> None:
        self.metrics = Metrics()
        self.server: asyncio.AbstractServer | None = None
        self.connections: set[asyncio.StreamWriter] = set()

    async def bind(self, fleet: Fleet) -> None:
        self.server = await asyncio.start_server(
            lambda r, w: fleet.serve_connection(self, r, w), host=self.address, port=self.port, reuse_address=True
        )

    async def unbind(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in list(self.connections):
                writer.close()
            await self.server.wait_closed()
            self.server = None

    async def handle(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: bytes = b"") -> Response:
        raise NotImplementedError

    def metrics_response(self, query: dict[str, list[str]], extra: list[str]) -> Response:
        if query.get("format", [""])[0] == "prometheus":
            labels = f'host="{self.name}"'
            return Response(200, self.metrics.prometheus(labels, extra), content_type="text/plain; version=0.0.4")
        return Response.json(200, dict(self.metrics.snapshot(), host=self.name))


class Host(Endpoint):
    def __init__(self, spec: dict[str, t.Any], service: str, fleet: Fleet) -> None:
        super().__init__()
        self.fleet = fleet
        self.name = spec["name"]
        self.role = spec["role"]
        self.address = spec["address"]
        self.port = int(spec["port"])
        self.root = spec["root"]
        self.service = service
        self.faults: dict[str, t.Any] = {}
        self.version: str | None = None
        self.started_at = now_iso()
        self.started_monotonic = time.monotonic()
        self.state = "running"
        self.failure = ""
        self.lock = asyncio.Lock()
        self.cuts_done = 0  # transfers cut so far by the cut_transfer fault (reset when faults reload)
        self.api_requests = 0  # /api requests seen while the error_rate fault applies

    @property
    def version_file(self) -> str:
        return os.path.join(self.root, "apps", self.service, "current", "VERSION")

    def load_version(self) -> bool:
        """Read the version the service runs from now on, like a process loading its code at start."""
        self.started_at = now_iso()
        self.started_monotonic = time.monotonic()
        self.metrics = Metrics()
        try:
            with open(self.version_file, encoding="utf-8") as handle:
                version = handle.read().strip()
            if not version:
                raise ValueError("VERSION is empty")
        except (OSError, ValueError) as exc:
            self.version = None
            self.state = "failed"
            self.failure = f"service failed to start: cannot read {self.version_file}: {exc}"
            return False
        self.version = version
        self.state = "running"
        self.failure = ""
        return True

    def health(self) -> tuple[bool, dict[str, t.Any]]:
        body: dict[str, t.Any] = {
            "host": self.name,
            "service": self.service,
            "version": self.version,
            "started_at": self.started_at,
            "uptime_s": round(time.monotonic() - self.started_monotonic, 3),
        }
        reason = ""
        if self.state == "restarting":
            reason = "restarting"
        elif self.state == "failed":
            reason = self.failure
        elif self.faults.get("unhealthy_after") and compare_versions(self.version or "", self.faults["unhealthy_after"]) >= 0:
            reason = f"version {self.version} is unhealthy (fault unhealthy_after {self.faults['unhealthy_after']})"
        body["status"] = "unhealthy" if reason else "ok"
        if reason:
            body["reason"] = reason
        return not reason, body

    def summary(self) -> dict[str, t.Any]:
        healthy = self.health()[0]
        return {
            "role": self.role,
            "address": self.address,
            "port": self.port,
            "version": self.version,
            "state": self.state,
            "started_at": self.started_at,
            "healthy": healthy,
            "listening": self.server is not None,
            "faults": self.faults,
        }

    def api(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Response:
        """A small user journey: POST /login {"user"} answers a token; GET /api/items needs it as a Bearer token.

        Fault error_rate answers 500 to that percent of /api requests (evenly spread) once the loaded version
        is at least the fault's version.
        """
        fault = self.faults.get("error_rate")
        if fault and path.startswith("/api/") and (not fault.get("version") or compare_versions(self.version or "", fault["version"]) >= 0):
            self.api_requests += 1
            percent = int(fault.get("percent", 100))
            if (self.api_requests * percent) // 100 != ((self.api_requests - 1) * percent) // 100:
                return Response.json(500, {"error": f"injected error (fault error_rate {percent}%)", "host": self.name, "version": self.version})
        if self.version is None:
            return Response.json(503, {"host": self.name, "status": "unhealthy", "reason": self.failure})
        if path == "/login":
            if method != "POST":
                response = Response.json(405, {"error": "POST a JSON body {\"user\": NAME} to log in"})
                response.headers["Allow"] = "POST"
                return response
            try:
                user = json.loads(body or b"{}").get("user")
            except (ValueError, AttributeError):
                user = None
            if not isinstance(user, str) or not user:
                return Response.json(400, {"error": "expected a JSON body {\"user\": NAME}"})
            return Response.json(200, {"token": self.token(user), "user": user, "expires_in": 300})
        scheme, _sep, token = headers.get("authorization", "").partition(" ")
        user = token.partition(".")[0]
        if scheme.lower() != "bearer" or not user or token != self.token(user):
            return Response.json(401, {"error": "log in first: POST /login, then send Authorization: Bearer <token>"})
        items = [{"id": number, "name": f"item-{number}"} for number in range(1, 4)]
        return Response.json(200, {"items": items, "user": user, "host": self.name, "version": self.version})

    def token(self, user: str) -> str:
        """Valid until the service restarts, like a session held in memory."""
        return f"{user}.{sha256_bytes(f'{self.name}/{self.started_at}/{user}'.encode())[:24]}"

    async def restart(self) -> tuple[bool, str]:
        async with self.lock:
            self.state = "restarting"
            await asyncio.sleep(RESTART_SECONDS)
            if self.faults.get("restart_fails"):
                self.state = "running" if self.version else "failed"
                log(f"restart {self.name}: refused (fault restart_fails), still running {self.version}")
                return False, f"restart of {self.name} failed (fault restart_fails); still running {self.version}"
            previous = self.version
            if not self.load_version():
                log(f"restart {self.name}: {self.failure}")
                return False, self.failure
            log(f"restart {self.name}: {previous} -> {self.version}")
            return True, f"{self.name} restarted, running {self.version}"

    async def handle(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: bytes = b"") -> Response:
        delay = self.faults.get("delay_ms") or 0
        if delay and not (self.faults.get("slow_after") and compare_versions(self.version or "", self.faults["slow_after"]) < 0):
            await asyncio.sleep(delay / 1000.0)
        correlation_id = headers.get("x-correlation-id")
        if correlation_id and (correlation_id in self.metrics.correlation_ids or len(self.metrics.correlation_ids) < 64):
            self.metrics.correlation_ids[correlation_id] += 1
        if path in ("/login", "/api/items"):
            return self.api(method, path, headers, body)
        if path == "/health":
            healthy, body = self.health()
            return Response.json(200 if healthy else 503, body)
        if path == "/version":
            if self.version is None:
                return Response.json(503, {"host": self.name, "status": "unhealthy", "reason": self.failure})
            return Response.json(200, {"host": self.name, "service": self.service, "version": self.version, "started_at": self.started_at})
        if path == "/metrics":
            healthy = self.health()[0]
            labels = f'host="{self.name}"'
            extra = [
                "# HELP fleet_service_up 1 when /health answers 200.",
                "# TYPE fleet_service_up gauge",
                f"fleet_service_up{{{labels}}} {1 if healthy else 0}",
                "# HELP fleet_service_info Version the service loaded at its last start.",
                "# TYPE fleet_service_info gauge",
                f'fleet_service_info{{{labels},service="{self.service}",version="{self.version or ""}"}} 1',
            ]
            return self.metrics_response(query, extra)
        if path == "/":
            healthy, body = self.health()
            page = (
                f"<!doctype html><title>{self.name}</title><h1>{self.service} on {self.name}</h1>"
                f"<p>role {self.role}, version {body['version']}, status {body['status']}, started {self.started_at}</p>"
                '<p><a href="/health">/health</a> <a href="/version">/version</a> <a href="/metrics">/metrics</a></p>\n'
            )
            return Response(200, page.encode(), content_type="text/html; charset=utf-8")
        if self.role == "edge" and path.startswith("/cache/sha256/"):
            digest = path[len("/cache/sha256/") :]
            if not SHA256_RE.match(digest):
                return Response.json(400, {"error": "expected /cache/sha256/<64 hex digits>"})
            return self.cache_response(digest, headers.get("range"))
        return Response.json(404, {"error": f"no route {path}"})

    def cache_response(self, digest: str, range_header: str | None) -> Response:
        """Serve from the edge cache; fill a miss from the origin like a pull-through cache."""
        cache_dir = os.path.join(self.root, "cache", "sha256")
        path = os.path.join(cache_dir, digest)
        if not os.path.exists(path):
            name = self.fleet.origin.artifacts.get(digest)
            if name is None:
                return Response.json(404, {"error": f"{digest} is neither cached nor known to the origin"})
            with open(os.path.join(self.fleet.origin.artifacts_dir, name), "rb") as handle:
                data = handle.read()
            self.fleet.origin.metrics.bytes_total += len(data)  # a pull-through fill is origin traffic
            if self.faults.get("corrupt_edge_artifact"):
                data = corrupt_bytes(data)
            os.makedirs(cache_dir, exist_ok=True)
            write_atomic(path, data)
            log(f"edge {self.name}: cache fill {digest} ({name})")
        response = file_response(path, range_header, etag=digest)
        cut = self.faults.get("cut_transfer")
        if cut and response.file and self.cuts_done < cut.get("times", 1):
            self.cuts_done += 1
            response.cut_after = int(cut.get("after_bytes", 0))
            log(f"edge {self.name}: cutting the transfer of {digest} after {response.cut_after} bytes (fault cut_transfer)")
        return response


class Origin(Endpoint):
    def __init__(self, spec: dict[str, t.Any]) -> None:
        super().__init__()
        self.name = "origin"
        self.address = spec["address"]
        self.port = int(spec["port"])
        self.artifacts_dir = spec["artifacts_dir"]
        self.artifacts: dict[str, str] = dict(spec.get("artifacts") or {})

    async def handle(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: bytes = b"") -> Response:
        if path == "/health":
            return Response.json(200, {"status": "ok", "host": "origin", "artifacts": len(self.artifacts)})
        if path == "/metrics":
            return self.metrics_response(query, [])
        if path in ("/", "/artifacts", "/artifacts/"):
            return Response.json(200, {"artifacts": [{"name": n, "sha256": d} for d, n in sorted(self.artifacts.items(), key=lambda i: i[1])]})
        if path.startswith("/artifacts/"):
            name = path[len("/artifacts/") :]
            if not NAME_RE.match(name):
                return Response.json(400, {"error": "bad artifact name"})
            digest = next((d for d, n in self.artifacts.items() if n == name), None)
            return file_response(os.path.join(self.artifacts_dir, name), headers.get("range"), etag=digest)
        if path.startswith("/sha256/"):
            digest = path[len("/sha256/") :]
            if digest not in self.artifacts:
                return Response.json(404, {"error": f"no artifact with sha256 {digest}"})
            return file_response(os.path.join(self.artifacts_dir, self.artifacts[digest]), headers.get("range"), etag=digest)
        return Response.json(404, {"error": f"no route {path}"})


class Fleet:
    def __init__(self, fleet_dir: str) -> None:
        self.dir = fleet_dir
        self.run_dir = os.path.join(fleet_dir, "run")
        self.config_path = os.path.join(fleet_dir, "service.json")
        with open(self.config_path, "rb") as handle:
            raw = handle.read()
        self.config_sha256 = sha256_bytes(raw)
        with open(os.path.abspath(__file__), "rb") as handle:
            self.script_sha256 = sha256_bytes(handle.read())
        config = json.loads(raw)
        self.service = config["service"]
        self.faults_file = config["faults_file"]
        self.faults_sha256 = ""
        self.faults_stamp: tuple[int, int] | None = None
        self.origin = Origin(config["origin"])
        self.hosts = {spec["name"]: Host(spec, self.service, self) for spec in config["hosts"]}
        self.started_at = now_iso()
        self.stopping = asyncio.Event()
        self.control: asyncio.AbstractServer | None = None

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self.load_faults()
        for host in self.hosts.values():
            host.load_version()
        await self.origin.bind(self)
        await asyncio.gather(*(host.bind(self) for host in self.hosts.values() if not host.faults.get("unreachable")))
        os.chdir(self.run_dir)  # the control socket path stays short however deep the fleet dir is
        if os.path.exists(CONTROL_SOCKET):
            os.unlink(CONTROL_SOCKET)
        self.control = await asyncio.start_unix_server(self.serve_control, path=CONTROL_SOCKET)
        os.chmod(CONTROL_SOCKET, 0o600)
        write_atomic(os.path.join(self.run_dir, "service.pid"), f"{os.getpid()}\n".encode())
        bound = sum(1 for host in self.hosts.values() if host.server is not None)
        log(f"ready: {bound}/{len(self.hosts)} hosts listening, origin {self.origin.address}:{self.origin.port}")

    async def stop(self) -> None:
        if self.control is not None:
            self.control.close()
        await asyncio.gather(self.origin.unbind(), *(host.unbind() for host in self.hosts.values()), return_exceptions=True)
        for path in (os.path.join(self.run_dir, CONTROL_SOCKET),):
            try:
                os.unlink(path)
            except OSError:
                pass
        pidfile = os.path.join(self.run_dir, "service.pid")
        try:
            with open(pidfile, encoding="utf-8") as handle:
                if handle.read().strip() == str(os.getpid()):
                    os.unlink(pidfile)
        except OSError:
            pass
        log("stopped")

    async def watch_faults(self) -> None:
        while not self.stopping.is_set():
            try:
                await asyncio.wait_for(self.stopping.wait(), timeout=FAULT_POLL_SECONDS)
            except asyncio.TimeoutError:
                pass
            if self.faults_changed_on_disk():
                await self.apply_faults()

    # ----------------------------------------------------------------- faults

    def faults_changed_on_disk(self) -> bool:
        try:
            stat = os.stat(self.faults_file)
        except FileNotFoundError:
            return self.faults_stamp is not None
        return (stat.st_mtime_ns, stat.st_size) != self.faults_stamp

    def load_faults(self) -> bool:
        """Read faults.json into every host; return whether which hosts listen has to change."""
        try:
            stat = os.stat(self.faults_file)
            with open(self.faults_file, "rb") as handle:
                raw = handle.read()
            per_host = json.loads(raw).get("hosts") or {}
            stamp: tuple[int, int] | None = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            raw, per_host, stamp = b"", {}, None
        except (OSError, ValueError) as exc:
            log(f"ignoring unreadable {self.faults_file}: {exc}")
            return False
        self.faults_stamp = stamp
        self.faults_sha256 = sha256_bytes(raw) if raw else ""
        for name, host in self.hosts.items():
            host.faults = dict(per_host.get(name) or {})
            host.cuts_done = 0
        return True

    async def apply_faults(self) -> dict[str, t.Any]:
        self.load_faults()
        started, stopped = [], []
        for host in self.hosts.values():
            unreachable = bool(host.faults.get("unreachable"))
            if unreachable and host.server is not None:
                await host.unbind()
                stopped.append(host.name)
            elif not unreachable and host.server is None:
                await host.bind(self)
                started.append(host.name)
        faulty = sorted(name for name, host in self.hosts.items() if host.faults)
        log(f"faults reloaded ({self.faults_sha256[:12] or 'none'}): {len(faulty)} hosts with faults; listening again {started}, stopped {stopped}")
        return {"faults_sha256": self.faults_sha256, "hosts_with_faults": faulty, "listening": started, "stopped": stopped}

    # ----------------------------------------------------------------- HTTP

    async def serve_connection(self, endpoint: Endpoint, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        endpoint.connections.add(writer)
        try:
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), timeout=IDLE_TIMEOUT_SECONDS)
                except (asyncio.TimeoutError, asyncio.LimitOverrunError, ValueError):
                    break
                if not line:
                    break
                if line in (b"\r\n", b"\n"):
                    continue
                started = time.monotonic()
                parts = line.decode("latin-1").strip().split()
                headers: dict[str, str] = {}
                for _count in range(MAX_HEADERS):
                    raw = await reader.readline()
                    if raw in (b"\r\n", b"\n", b""):
                        break
                    key, _sep, value = raw.decode("latin-1").partition(":")
                    headers[key.strip().lower()] = value.strip()
                if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                    await self.respond(writer, endpoint, Response.json(400, {"error": "bad request line"}), started, head=False, keep_alive=False)
                    break
                method, target, protocol = parts
                length = int(headers.get("content-length") or 0)
                body = await reader.readexactly(length) if length else b""
                connection = headers.get("connection", "").lower()
                keep_alive = connection != "close" if protocol == "HTTP/1.1" else connection == "keep-alive"
                url = urllib.parse.urlsplit(target)
                query = urllib.parse.parse_qs(url.query)
                if method not in ("GET", "HEAD") and not (method == "POST" and url.path == "/login"):
                    response = Response.json(405, {"error": f"method {method} not allowed"})
                    response.headers["Allow"] = "GET, HEAD"
                else:
                    try:
                        response = await endpoint.handle(method, urllib.parse.unquote(url.path), query, headers, body)
                    except Exception as exc:  # a demo service answers 500 rather than dying
                        log(f"{endpoint.name}: error serving {target}: {exc!r}")
                        response = Response.json(500, {"error": str(exc)})
                await self.respond(writer, endpoint, response, started, head=method == "HEAD", keep_alive=keep_alive)
                if not keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            endpoint.connections.discard(writer)
            writer.close()

    async def respond(
        self, writer: asyncio.StreamWriter, endpoint: Endpoint, response: Response, started: float, *, head: bool, keep_alive: bool
    ) -> None:
        lines = [
            f"HTTP/1.1 {response.status} {REASONS.get(response.status, 'Unknown')}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {response.length}",
            f"Server: fleetpatch-demo/{endpoint.name}",
            f"Connection: {'keep-alive' if keep_alive else 'close'}",
        ]
        lines += [f"{key}: {value}" for key, value in response.headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        sent = 0
        if not head:
            if response.file:
                path, offset, remaining = response.file
                if response.cut_after is not None:
                    remaining = min(remaining, response.cut_after)
                with open(path, "rb") as handle:
                    handle.seek(offset)
                    while remaining > 0:
                        chunk = handle.read(min(CHUNK, remaining))
                        if not chunk:
                            break
                        writer.write(chunk)
                        remaining -= len(chunk)
                        sent += len(chunk)
                        await writer.drain()
                if response.cut_after is not None:
                    # the connection drops mid-body, like a reset: the client holds fewer bytes than announced
                    endpoint.metrics.record(response.status, (time.monotonic() - started) * 1000.0, sent)
                    writer.transport.abort()
                    raise ConnectionResetError("transfer cut (fault cut_transfer)")
            else:
                writer.write(response.body)
                sent = len(response.body)
        await writer.drain()
        endpoint.metrics.record(response.status, (time.monotonic() - started) * 1000.0, sent)

    # ----------------------------------------------------------------- control

    async def serve_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            try:
                request = json.loads(line)
                reply = await self.control_command(request)
            except ValueError as exc:
                reply = {"ok": False, "code": "bad_request", "error": f"bad request: {exc}"}
            writer.write((json.dumps(reply, sort_keys=True) + "\n").encode())
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def control_command(self, request: dict[str, t.Any]) -> dict[str, t.Any]:
        command = request.get("cmd")
        name = request.get("host")
        if name is not None and name not in self.hosts:
            return {"ok": False, "code": "unknown_host", "error": f"no host {name} in this demo fleet"}
        if command == "ping":
            return {"ok": True, "pid": os.getpid()}
        if command == "status":
            if request.get("brief"):
                hosts: dict[str, t.Any] = {}
            elif name:
                hosts = {name: self.hosts[name].summary()}
            else:
                hosts = {n: h.summary() for n, h in self.hosts.items()}
            return {
                "ok": True,
                "pid": os.getpid(),
                "started_at": self.started_at,
                "config_sha256": self.config_sha256,
                "script_sha256": self.script_sha256,
                "faults_sha256": self.faults_sha256,
                "origin": f"http://{self.origin.address}:{self.origin.port}",
                "hosts": hosts,
            }
        if command == "restart":
            if not name:
                return {"ok": False, "code": "bad_request", "error": "restart needs a host"}
            ok, message = await self.hosts[name].restart()
            return {"ok": ok, "code": "ok" if ok else "restart_failed", "message": message, "error": "" if ok else message, "host": self.hosts[name].summary()}
        if command == "reload-faults":
            return dict(await self.apply_faults(), ok=True)
        return {"ok": False, "code": "bad_request", "error": f"unknown command {command!r}"}


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))
        except (ValueError, OSError):
            pass


def notify(fd: int | None, message: str) -> None:
    """Tell the waiting parent (--daemon) how the start went; it prints and exits accordingly."""
    if fd is not None:
        try:
            os.write(fd, (message + "\n").encode())
        finally:
            os.close(fd)


async def main_async(fleet_dir: str, ready_fd: int | None) -> int:
    try:
        fleet = Fleet(fleet_dir)
    except (OSError, ValueError, KeyError) as exc:
        log(f"cannot start: bad configuration in {fleet_dir}/service.json: {exc!r}")
        notify(ready_fd, f"error: bad configuration in {fleet_dir}/service.json: {exc!r}")
        return 1
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, fleet.stopping.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(fleet.apply_faults()))
    try:
        await fleet.start()
    except OSError as exc:
        log(f"cannot start: {exc}")
        notify(ready_fd, f"error: cannot start: {exc}")
        await fleet.stop()
        return 1
    notify(ready_fd, f"ready {os.getpid()}")
    await fleet.watch_faults()
    await fleet.stop()
    return 0


def daemonize(log_path: str, timeout: float) -> tuple[int | None, int | None]:
    """Fork into a new session with stdio on log_path, like a classic daemon.

    Returns (exit code, None) in the parent, which waits until the child is serving (it prints the child's
    pid) or failed, and (None, fd to report readiness on) in the child.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_fd)
        data = b""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            readable = select.select([read_fd], [], [], max(0.0, remaining))[0] if remaining > 0 else []
            if not readable:
                os.kill(pid, signal.SIGKILL)
                print(f"fleet_service: not serving after {timeout:g}s; see {log_path}", file=sys.stderr)
                return 1, None
            chunk = os.read(read_fd, 4096)
            if not chunk:
                break
            data += chunk
        os.close(read_fd)
        message = data.decode("utf-8", "replace").strip()
        if message.startswith("ready "):
            print(message.split()[1])
            return 0, None
        print(f"fleet_service: {message or 'exited before it was serving'}; see {log_path}", file=sys.stderr)
        return 1, None
    os.close(read_fd)
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    out = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    return None, write_fd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, help="the demo fleet directory (holds service.json)")
    parser.add_argument(
        "--daemon", action="store_true", help="detach into a new session; exit 0 (printing the pid) once every host listens"
    )
    parser.add_argument("--log", help="with --daemon: file for the daemon's output (default <dir>/log/service.log)")
    parser.add_argument("--timeout", type=float, default=60.0, help="with --daemon: seconds to wait for the start")
    args = parser.parse_args(argv)
    fleet_dir = os.path.abspath(args.dir)
    ready_fd = None
    if args.daemon:
        log_path = os.path.abspath(args.log or os.path.join(fleet_dir, "log", "service.log"))
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        code, ready_fd = daemonize(log_path, args.timeout)
        if code is not None:
            return code
    raise_fd_limit()
    return asyncio.run(main_async(fleet_dir, ready_fd))


if __name__ == "__main__":
    sys.exit(main())
