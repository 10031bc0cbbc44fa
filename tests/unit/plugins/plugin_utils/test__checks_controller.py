"""The controller side of checks: targets rendered per host, answers judged, the overview of the rollout role."""

from __future__ import annotations

import json
import typing as t

import pytest

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._checks import (
    MISSING,
    CheckError,
    assertion_failure,
    host_context,
    judge_http,
    judge_value,
    normalize_checks,
    overview,
    promql_regex,
    referenced_vars,
    render_target,
    validate_targets,
)

URL = "http://${var.fleet_address}:${var.fleet_port}"
JOURNEY = {
    "name": "journey",
    "steps": [
        {"name": "login", "method": "post", "url": f"{URL}/login", "json": {"user": "synthetic-${host}"}, "capture": {"token": "token"}},
        {"name": "items", "url": f"{URL}/api/items", "headers": {"Authorization": "Bearer ${capture.token}"},
         "expect": {"status": [200], "json": ["length(items) > `0`", {"query": "version", "exists": True}], "max_latency_ms": 500}},
    ],
}


def test_promql_regex_escapes_for_a_double_quoted_string() -> None:
    assert promql_regex(["web-01", "db.internal", "a+b"]) == "web-01|db\\\\.internal|a\\\\+b"


def test_referenced_vars_and_overview() -> None:
    checks = normalize_checks([
        JOURNEY,
        {"name": "port", "kind": "tcp", "address": "${var.fleet_address}", "port": "${var.fleet_port}", "baseline": {"latency_ratio": 2}},
        {"name": "disk", "kind": "command", "command": "df -h /"},
    ])
    assert referenced_vars(checks) == ["fleet_address", "fleet_port"]
    assert overview(checks) == {"names": ["journey", "port", "disk"], "baseline": True, "command": [checks[2]]}


HOSTS = {
    "h1": {"fleet_address": "127.0.0.1", "fleet_port": 8080},
    "h2": {"fleet_address": "127.0.0.2", "fleet_port": MISSING},
}


def contexts() -> dict[str, dict[str, t.Any]]:
    return {host: host_context(host, variables, {"run_id": "r1", "target_version": "1.0.1"}) for host, variables in HOSTS.items()}


def test_render_target_fills_every_step_with_captures_as_placeholders() -> None:
    (check,) = normalize_checks([JOURNEY])
    assert render_target(check, contexts()["h1"]) == {"urls": ["http://127.0.0.1:8080/login", "http://127.0.0.1:8080/api/items"]}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (JOURNEY, "policy.checks[0] (journey).steps[0].url: 'http://${var.fleet_address}:${var.fleet_port}/login' for host 'h2': "
                  "host variable 'fleet_port' is not defined"),
        ({"name": "p", "kind": "tcp", "address": "${var.fleet_address}", "port": "${var.fleet_port}"},
         "policy.checks[0] (p).port: '${var.fleet_port}' for host 'h2': host variable 'fleet_port' is not defined"),
        ({"name": "u", "url": "${var.fleet_address}/x"},
         "policy.checks[0] (u).steps[0].url: '${var.fleet_address}/x' renders to '127.0.0.1/x' for host 'h1': expected an http:// or https:// URL "
         "with a host"),
        ({"name": "u", "url": "http://${var.fleet_address}:${run_id}/"},
         "policy.checks[0] (u).steps[0].url: 'http://${var.fleet_address}:${run_id}/' renders to 'http://127.0.0.1:r1/' for host 'h1': "
         "not a valid URL (Port could not be cast to integer value as 'r1')"),
        ({"name": "u", "url": "http://${var.fleet_address}:${patch_id}/"},
         "policy.checks[0] (u).steps[0].url: 'http://${var.fleet_address}:${patch_id}/' for host 'h1': '${patch_id}' has no value"),
    ],
)
def test_validate_targets_errors(spec: dict[str, t.Any], message: str) -> None:
    with pytest.raises(CheckError) as exc:
        validate_targets(normalize_checks([spec]), contexts())
    assert str(exc.value) == message


def test_validate_targets_ignores_fleet_and_host_side_checks() -> None:
    checks = normalize_checks([
        {"name": "p", "kind": "prometheus", "url": "http://127.0.0.1:9090", "query": "up", "condition": {"min": 1}},
        {"name": "c", "kind": "command", "command": "true"},
    ])
    validate_targets(checks, contexts())


# ---------------------------------------------------------------------------------------------------------
# judging


DOC = {"status": "ok", "items": [{"id": 1}, {"id": 2}], "version": "1.0.1", "count": 2, "token": "t.abc"}


@pytest.mark.parametrize(
    ("assertion", "failure"),
    [
        ({"query": "status", "equals": "ok"}, None),
        ({"query": "status", "equals": "down"}, "json 'status' = 'ok', expected == 'down'"),
        ({"query": "version", "not_equals": "1.0.1"}, "json 'version' = '1.0.1', expected != '1.0.1'"),
        ({"query": "count", "min": 3}, "json 'count' = 2, expected >= 3"),
        ({"query": "count", "max": 1}, "json 'count' = 2, expected <= 1"),
        ({"query": "status", "max": 1}, "json 'status' = 'ok', expected a number <= 1"),
        ({"query": "version", "matches": r"^1\.1\."}, "json 'version' = '1.0.1', expected to match '^1\\\\.1\\\\.'"),
        ({"query": "missing", "exists": True}, "json 'missing' = null, expected a value"),
        ({"query": "length(items) > `0`", "truthy": True}, None),
        ({"query": "items[?id > `5`]", "truthy": True}, "json 'items[?id > `5`]' = [], expected a true value"),
        ({"query": "length(count)", "exists": True}, "json 'length(count)' = null, expected a value"),
    ],
)
def test_assertion_failure(assertion: dict[str, t.Any], failure: str | None) -> None:
    assert assertion_failure(assertion, DOC) == failure


def _step(**expect: t.Any) -> dict[str, t.Any]:
    (check,) = normalize_checks([{"name": "s", "url": "http://x/", "expect": expect, "capture": {"token": "token"}}])
    return check["steps"][0]


@pytest.mark.parametrize(
    ("step", "status", "body", "latency", "problem"),
    [
        (_step(), 200, json.dumps(DOC).encode(), 5.0, None),
        (_step(), 500, b'{"error": "boom"}', 5.0, "s: HTTP 500, expected 200"),
        (_step(status=[200, 204]), 503, b"", 5.0, "s: HTTP 503, expected 200, 204"),
        (_step(max_latency_ms=100), 200, json.dumps(DOC).encode(), 150.5, "s: took 150.5 ms, expected <= 100 ms"),
        (_step(body_regex="items"), 200, b'{"token": "x"}', 5.0, "s: body does not match 'items'"),
        (_step(), 200, b"<html>", 5.0, "s: body is not JSON"),
        (_step(json=[{"query": "status", "equals": "ok"}]), 200, b'{"status": "down", "token": "x"}', 5.0,
         "s: json 'status' = 'down', expected == 'ok'"),
        (_step(), 200, b'{"status": "ok"}', 5.0, "s: capture token: 'token' found nothing"),
    ],
)
def test_judge_http(step: dict[str, t.Any], status: int, body: bytes, latency: float, problem: str | None) -> None:
    found, captures = judge_http(step, status=status, body=body, latency_ms=latency)
    assert found == problem
    assert captures == ({"capture.token": "t.abc"} if problem is None else {})


@pytest.mark.parametrize(
    ("condition", "value", "problem"),
    [
        ({"max": 0.05}, 0.01, None),
        ({"max": 0.05}, 0.5, "value 0.5 > max 0.05"),
        ({"min": 1}, 0, "value 0 < min 1"),
        ({"equals": 1}, 2, "value 2 != 1"),
        ({"not_equals": 0}, 0, "value 0 == 0"),
        ({"min": 1, "max": 3}, 2, None),
    ],
)
def test_judge_value(condition: dict[str, float], value: float, problem: str | None) -> None:
    assert judge_value(condition, value) == problem
