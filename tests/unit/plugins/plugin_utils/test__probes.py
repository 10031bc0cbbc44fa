"""Controller-side probes against small real servers on 127.0.0.1 (a JSON API with a login, a fake Prometheus)."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
import typing as t
import urllib.parse

import pytest

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._checks import MISSING, host_context, normalize_checks
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils import _probes


class Api(http.server.BaseHTTPRequestHandler):
    """POST /login -> token; GET /api/items needs it; GET /prom/api/v1/query answers like Prometheus."""

    seen: list[dict[str, str]] = []
    prometheus: dict[str, t.Any] = {}

    def log_message(self, *args: t.Any) -> None:  # keep pytest output clean
        pass

    def _json(self, status: int, data: t.Any) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        Api.seen.append({key.lower(): value for key, value in self.headers.items()})
        length = int(self.headers.get("Content-Length") or 0)
        user = json.loads(self.rfile.read(length) or b"{}").get("user")
        self._json(200 if user else 400, {"token": f"tok-{user}"} if user else {"error": "no user"})

    def do_GET(self) -> None:  # noqa: N802
        Api.seen.append({key.lower(): value for key, value in self.headers.items()})
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/api/items":
            ok = self.headers.get("Authorization", "").startswith("Bearer tok-")
            self._json(200 if ok else 401, {"items": [1, 2]} if ok else {"error": "login"})
        elif url.path == "/prom/api/v1/query":
            query = urllib.parse.parse_qs(url.query)["query"][0]
            Api.prometheus["last_query"] = query
            self._json(*Api.prometheus.get(query, (200, {"status": "success", "data": {"resultType": "vector", "result": []}})))
        else:
            self._json(404, {"error": "no route"})


@pytest.fixture(scope="module")
def server() -> t.Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Api)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def journey(token_header: str = "Bearer ${capture.token}") -> dict[str, t.Any]:
    (check,) = normalize_checks([{
        "name": "journey",
        "samples": 2,
        "steps": [
            {"name": "login", "method": "POST", "url": "http://${var.api}/login", "json": {"user": "${host}"}, "capture": {"token": "token"}},
            {"name": "items", "url": "http://${var.api}/api/items", "headers": {"Authorization": token_header},
             "expect": {"json": ["length(items) == `2`"]}},
        ],
    }])
    return check


def context(server: str, host: str = "h1") -> dict[str, t.Any]:
    return host_context(host, {"api": server}, {"run_id": "r1"})


def test_http_journey_passes_captures_and_sends_the_correlation_id(server: str) -> None:
    Api.seen.clear()
    samples = _probes.take_samples(journey(), context(server), correlation_id="corr-42")
    assert [item["outcome"] for item in samples] == ["ok", "ok"]
    assert all(item["latency_ms"] > 0 for item in samples)
    assert len(Api.seen) == 4 and {headers["x-correlation-id"] for headers in Api.seen} == {"corr-42"}
    assert Api.seen[0]["content-type"] == "application/json"


def test_http_journey_step_failure_is_an_error_sample(server: str) -> None:
    (item,) = _probes.take_samples(dict(journey("Basic nope"), samples=1), context(server), correlation_id="c")
    assert (item["outcome"], item["reason"]) == ("error", "items: HTTP 401, expected 200")


def test_connection_refused_is_an_error_sample() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (item,) = _probes.take_samples(dict(journey(), samples=1), context(f"127.0.0.1:{port}"), correlation_id="c")
    assert item["outcome"] == "error" and item["reason"].startswith("login: URLError: [Errno 111] Connection refused")


def test_tcp_and_dns(server: str) -> None:
    tcp, dns = normalize_checks([
        {"name": "tcp", "kind": "tcp", "address": "127.0.0.1", "port": int(server.split(":")[1]), "samples": 1},
        {"name": "dns", "kind": "dns", "hostname": "localhost", "expect_addresses": ["127.0.0.1"], "family": "ipv4", "samples": 1},
    ])
    assert _probes.take_samples(tcp, context(server), correlation_id="c")[0]["outcome"] == "ok"
    (item,) = _probes.take_samples(dns, context(server), correlation_id="c")
    assert item["outcome"] == "ok" and "127.0.0.1" in item["addresses"]


def test_initial_delay_waits_before_the_first_sample_only(server: str) -> None:
    """Metrics lag a restart by up to a scrape interval; the first sample waits, the latency does not include the wait."""
    (tcp,) = normalize_checks([{"name": "tcp", "kind": "tcp", "address": "127.0.0.1", "port": int(server.split(":")[1]),
                                "samples": 2, "initial_delay": 0.3}])
    started = time.monotonic()
    samples = _probes.take_samples(tcp, context(server), correlation_id="c")
    elapsed = time.monotonic() - started
    assert [item["outcome"] for item in samples] == ["ok", "ok"]
    assert 0.3 <= elapsed < 0.6 and all(item["latency_ms"] < 300 for item in samples)


def prometheus(server: str, **extra: t.Any) -> dict[str, t.Any]:
    (check,) = normalize_checks([{"name": "errors", "kind": "prometheus", "url": f"http://{server}/prom", "samples": 1,
                                  "query": 'rate(errors{host=~"${hosts_regex}"}[1m])', "condition": {"max": 0.05}, **extra}])
    return check


def vector(*values: tuple[str, str]) -> tuple[int, dict[str, t.Any]]:
    return 200, {"status": "success", "data": {"resultType": "vector",
                                               "result": [{"metric": {"host": host}, "value": [1.0, value]} for host, value in values]}}


@pytest.mark.parametrize(
    ("answer", "outcome", "reason", "value"),
    [
        (vector(("h1", "0.01"), ("h2", "0.02")), "ok", "", 0.02),
        # rate() drops the metric name: the series is named by its labels
        (vector(("h1", "0.01"), ("h2", "0.5")), "error", '{host="h2"}: value 0.5 > max 0.05', 0.5),
        (vector(), "nodata", 'query returned no data: rate(errors{host=~"h1|h\\\\.2"}[1m])', None),
        (vector(("h1", "NaN")), "nodata", 'query returned no data: rate(errors{host=~"h1|h\\\\.2"}[1m])', None),
        ((400, {"status": "error", "error": "parse error"}), "unavailable", "query http://{server}/prom: HTTP 400: parse error", None),
        ((200, {"status": "success", "data": {"resultType": "matrix", "result": []}}), "unavailable",
         "query http://{server}/prom: result type 'matrix'; use an instant vector or scalar", None),
    ],
)
def test_prometheus_sample(server: str, answer: tuple[int, dict[str, t.Any]], outcome: str, reason: str, value: float | None) -> None:
    check = prometheus(server)
    query = 'rate(errors{host=~"h1|h\\\\.2"}[1m])'
    Api.prometheus[query] = answer
    (item,) = _probes.take_samples(check, _probes.fleet_context({"run_id": "r1"}, ["h1", "h.2"], "canary"), correlation_id="c")
    assert Api.prometheus["last_query"] == query
    assert (item["outcome"], item["reason"], item.get("value")) == (outcome, reason.replace("{server}", server), value)


def test_evaluate_runs_every_host_and_the_fleet_check_once(server: str) -> None:
    Api.prometheus['rate(errors{host=~"h1|h2"}[1m])'] = vector(("h1", "0"))
    checks = [journey(), prometheus(server)]
    hostvars = {"h1": {"api": server}, "h2": {"api": server}, "h3": {}}
    results, outcome = _probes.evaluate(checks, ["h1", "h2"], task_vars={"hostvars": hostvars}, run_context={"run_id": "r1"},
                                        correlation_id="c", wave="canary")
    assert [(result["check"], result["host"], result["status"]) for result in results] == [
        ("journey", "h1", "pass"), ("journey", "h2", "pass"), ("errors", "*", "pass")]
    assert outcome.status == "pass"
    assert _probes.contexts_for(["h3"], checks, {"hostvars": hostvars}, {})["h3"] == {"host": "h3"}
    assert _probes.contexts_for(["h3"], checks, {"hostvars": hostvars}, {})["h3"].get("var.api", MISSING) is MISSING


def test_evaluate_compares_with_the_stored_baseline_and_control_hosts(server: str, tmp_path) -> None:
    (check,) = normalize_checks([{"name": "items", "url": "http://${var.api}/api/items", "samples": 2,
                                  "expect": {"status": 401}, "baseline": {"latency_ratio": 1.2, "min_delta_ms": 0, "control_hosts": 1}}])
    _probes.save_baselines(str(tmp_path), {"h1": {"items": {"captured_at": "t", "samples": [{"outcome": "ok", "latency_ms": 0.001, "reason": ""}]}}})
    baselines = _probes.load_baselines(str(tmp_path))
    hostvars = {"h1": {"api": server}, "h2": {"api": server}}
    results, outcome = _probes.evaluate([check], ["h1"], task_vars={"hostvars": hostvars}, run_context={}, correlation_id="c", wave="w",
                                        baselines=baselines, control_hosts=["h1", "h2"])
    (result,) = results
    assert result["status"] == "fail"  # anything real is slower than a 1 microsecond baseline
    names = [item["name"] for item in result["conditions"]]
    assert names == ["error_rate", "baseline.p95", "baseline.error_rate", "control.p95", "control.error_rate"]
    assert result["conditions"][3]["hosts"] == ["h2"]
    assert outcome.host_failures == {"h1": result["reason"]}
