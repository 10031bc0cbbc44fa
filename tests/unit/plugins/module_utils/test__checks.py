from __future__ import annotations

import json
import typing as t

import pytest

from ansible_collections.fleetpatch.rollout.plugins.module_utils._checks import (
    CheckError,
    jmespath_error,
    judge_command,
    normalize_checks,
    pause_before,
    render,
    run_command_checks,
    sample,
    template_names,
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


def http(**extra: t.Any) -> dict[str, t.Any]:
    return {"name": "a", "url": "http://x/", **extra}


# ---------------------------------------------------------------------------------------------------------
# normalisation


def test_single_request_is_one_step_named_after_the_check() -> None:
    (check,) = normalize_checks([{"name": "version", "url": f"{URL}/version", "latency_ms": {"p95": 250}}])
    assert check == {
        "name": "version",
        "kind": "http",
        "samples": 3,
        "interval": 0,
        "initial_delay": 0,
        "timeout": 5,
        "max_error_rate": 0,
        "max_consecutive_errors": None,
        "must_have_data": True,
        "latency_ms": {"p95": 250},
        "baseline": None,
        "steps": [
            {"name": "version", "method": "GET", "url": f"{URL}/version", "headers": {}, "validate_certs": True,
             "expect": {"status": [200], "json": []}, "capture": {}},
        ],
    }


def test_journey_normalises_and_is_idempotent() -> None:
    (check,) = normalize_checks([dict(JOURNEY, baseline=True, max_error_rate="5%")])
    assert check["steps"][0]["method"] == "POST"
    assert check["steps"][1]["expect"]["json"] == [{"query": "length(items) > `0`", "truthy": True}, {"query": "version", "exists": True}]
    assert check["baseline"] == {"latency_ratio": 1.2, "percentile": 95, "min_delta_ms": 50, "error_rate_delta": 0, "control_hosts": 0}
    assert check["max_error_rate"] == 0.05
    assert normalize_checks([check]) == [check]
    assert json.loads(json.dumps(check)) == check


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"name": "t", "kind": "tcp", "address": "${var.fleet_address}", "port": "8080"},
         {"address": "${var.fleet_address}", "port": 8080}),
        ({"name": "t", "kind": "tcp", "address": "${var.fleet_address}", "port": "${var.fleet_port}"},
         {"address": "${var.fleet_address}", "port": "${var.fleet_port}"}),
        ({"name": "d", "kind": "dns", "hostname": "${host}.example.internal", "expect_addresses": ["${var.fleet_address}"]},
         {"hostname": "${host}.example.internal", "family": "any", "expect_addresses": ["${var.fleet_address}"]}),
        ({"name": "c", "kind": "command", "command": ["systemctl", "is-active", "myapp"], "stdout_regex": "^active"},
         {"command": ["systemctl", "is-active", "myapp"], "expect_rc": 0, "stdout_regex": "^active"}),
        ({"name": "p", "kind": "prometheus", "url": "http://127.0.0.1:9090", "query": 'up{host=~"${hosts_regex}"}', "condition": {"min": 1}},
         {"url": "http://127.0.0.1:9090", "query": 'up{host=~"${hosts_regex}"}', "condition": {"min": 1}}),
    ],
)
def test_kind_fields(spec: dict[str, t.Any], expected: dict[str, t.Any]) -> None:
    (check,) = normalize_checks([spec])
    assert {key: check[key] for key in expected} == expected
    assert normalize_checks([check]) == [check]


P = "policy.checks[0] (a)"
ERRORS: list[tuple[str, t.Any, str]] = [
    ("not a list", "x", "policy.checks must be a list, got str"),
    ("bad name", [{"name": "bad name!"}], "policy.checks[0].name must be letters, digits, '.', '_' or '-' (at most 64), got 'bad name!'"),
    ("duplicate name", [http(), {"name": "a", "kind": "dns", "hostname": "x"}], "policy.checks: check name(s) a used twice"),
    ("unknown kind", [{"name": "a", "kind": "smtp"}], f"{P}.kind: expected one of http, tcp, dns, command, prometheus, got 'smtp'"),
    ("unknown key", [http(urll=1)], f"{P}: unknown key 'urll'; allowed: baseline, body, capture, description, expect, headers, initial_delay, interval, "
     "json, kind, latency_ms, max_consecutive_errors, max_error_rate, method, must_have_data, name, samples, steps, timeout, url, validate_certs"),
    ("no url", [{"name": "a"}], f"{P}: an http check needs 'url' (one request) or 'steps' (a journey)"),
    ("url and steps", [http(steps=[])], f"{P}: give 'steps' or a single request (url), not both"),
    ("empty steps", [{"name": "a", "steps": []}], f"{P}.steps must list at least one request"),
    ("bad scheme", [http(url="ftp://x/")], f"{P}.request.url: expected an http:// or https:// URL, got 'ftp://x/'"),
    ("bad method", [http(method="FETCH")], f"{P}.request.method: expected one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, got 'FETCH'"),
    ("body and json", [http(body="x", json={})], f"{P}.request: give 'body' or 'json', not both"),
    ("unknown template", [http(url="http://${var.x}:${nope}/")], f"{P}.request.url: unknown template name '${{nope}}'; known: host, run_id, "
     "patch_id, target_version, var.<host variable>, capture.<name>"),
    ("unterminated template", [http(url="http://${var.x/")],
     f"{P}.request.url: unterminated template placeholder in 'http://${{var.x/'; write '$${{' for a literal '${{'"),
    ("empty template", [http(url="http://${}/")], f"{P}.request.url: empty template placeholder '${{}}' in 'http://${{}}/'"),
    ("capture not captured yet", [{"name": "a", "steps": [{"url": "http://x/${capture.token}"}]}],
     f"{P}.steps[0].url: '${{capture.token}}' is not captured by an earlier step (captured so far: none)"),
    ("capture captured later", [{"name": "a", "steps": [{"url": "http://x/", "headers": {"A": "${capture.t}"}, "capture": {"t": "t"}}]}],
     f"{P}.steps[0].headers.A: '${{capture.t}}' is not captured by an earlier step (captured so far: none)"),
    ("duplicate step", [{"name": "a", "steps": [{"name": "s", "url": "http://x/"}, {"name": "s", "url": "http://x/"}]}],
     f"{P}.steps: step name(s) s used twice"),
    ("bad header name", [http(headers={"bad header": "x"})], f"{P}.request.headers: 'bad header' is not a valid header name"),
    ("incomplete jmespath", [http(expect={"json": ["foo["]})],
     f"{P}.request.expect.json[0]: invalid JMESPath expression 'foo[': incomplete expression at column 4"),
    ("jmespath syntax", [http(expect={"json": [{"query": "a..b", "equals": 1}]})],
     f"{P}.request.expect.json[0].query: invalid JMESPath expression 'a..b': Expecting: ['quoted_identifier', 'unquoted_identifier', "
     "'lbracket', 'lbrace'], got: dot at column 2"),
    ("jmespath lexer", [http(expect={"json": ["`1"]})], f"{P}.request.expect.json[0]: invalid JMESPath expression '`1': Unclosed ` delimiter at column 0"),
    ("jmespath unknown function", [http(capture={"t": "nope(x)"})],
     f"{P}.request.capture.t: invalid JMESPath expression 'nope(x)': unknown function nope()"),
    ("assertion without op", [http(expect={"json": [{"query": "a"}]})],
     f"{P}.request.expect.json[0]: give at least one of equals, not_equals, min, max, matches, truthy, exists"),
    ("assertion unknown op", [http(expect={"json": [{"query": "a", "gt": 1}]})],
     f"{P}.request.expect.json[0]: unknown key 'gt'; allowed: query, equals, not_equals, min, max, matches, truthy, exists"),
    ("bad status", [http(expect={"status": [200, 999]})], f"{P}.request.expect.status must be between 100 and 599, got 999"),
    ("bad regex", [http(expect={"body_regex": "("})],
     f"{P}.request.expect.body_regex: invalid regular expression '(': missing ), unterminated subpattern at position 0"),
    ("bad capture name", [http(capture={"my-token": "t"})], f"{P}.request.capture: 'my-token' is not a name (letters, digits, '_')"),
    ("zero samples", [http(samples=0)], f"{P}.samples must be between 1 and 1000, got 0"),
    ("bool samples", [http(samples=True)], f"{P}.samples must be an integer, got bool"),
    ("negative interval", [http(interval=-1)], f"{P}.interval must be >= 0, got -1"),
    ("initial delay over an hour", [http(initial_delay=3601)], f"{P}.initial_delay must be between 0 and 3600, got 3601"),
    ("zero timeout", [http(timeout=0)], f"{P}.timeout must be > 0, got 0"),
    ("rate over 100%", [http(max_error_rate="150%")], f"{P}.max_error_rate must be between 0 and 1 (0% to 100%), got 150%"),
    ("rate over 1", [http(max_error_rate=1.5)], f"{P}.max_error_rate must be between 0 and 1, got 1.5"),
    ("rate text", [http(max_error_rate="some")], f"{P}.max_error_rate must be a fraction such as 0.05 or a percent such as '5%', got 'some'"),
    ("latency key", [http(latency_ms={"p42": 1})], f"{P}.latency_ms: unknown key 'p42'; allowed: p50, p90, p95, p99, max"),
    ("latency zero", [http(latency_ms={"p95": 0})], f"{P}.latency_ms.p95 must be > 0, got 0"),
    ("baseline ratio", [http(baseline={"latency_ratio": 0.5})], f"{P}.baseline.latency_ratio must be >= 1, got 0.5"),
    ("baseline nothing", [http(baseline={"latency_ratio": None, "error_rate_delta": None})],
     f"{P}.baseline: compares nothing; set latency_ratio and/or error_rate_delta"),
    ("baseline key", [http(baseline={"ratio": 2})],
     f"{P}.baseline: unknown key 'ratio'; allowed: control_hosts, error_rate_delta, latency_ratio, min_delta_ms, percentile"),
    ("must_have_data", [http(must_have_data="no")], f"{P}.must_have_data must be true or false, got str"),
    ("tcp port", [{"name": "a", "kind": "tcp", "address": "x", "port": 70000}], f"{P}.port must be a port number 1-65535, got 70000"),
    ("tcp address", [{"name": "a", "kind": "tcp", "port": 1}], f"{P}: 'address' is required"),
    ("dns family", [{"name": "a", "kind": "dns", "hostname": "x", "family": "ipx"}], f"{P}.family: expected one of any, ipv4, ipv6, got 'ipx'"),
    ("command empty", [{"name": "a", "kind": "command", "command": []}], f"{P}.command must not be empty"),
    ("command unsplittable", [{"name": "a", "kind": "command", "command": 'grep "x'}],
     f"{P}.command 'grep \"x' cannot be split into arguments: No closing quotation"),
    ("command baseline", [{"name": "a", "kind": "command", "command": "true", "baseline": True}],
     f"{P}.baseline: only http, tcp and dns checks compare against a baseline"),
    ("prometheus baseline", [{"name": "a", "kind": "prometheus", "url": "http://p:9090", "query": "up", "condition": {"max": 1}, "baseline": True}],
     f"{P}.baseline: only http, tcp and dns checks compare against a baseline"),
    ("prometheus host template", [{"name": "a", "kind": "prometheus", "url": "http://p:9090", "query": 'up{host="${host}"}', "condition": {"max": 1}}],
     f"{P}.query: unknown template name '${{host}}'; known: hosts_regex, wave, run_id, patch_id, target_version"),
    ("prometheus var template", [{"name": "a", "kind": "prometheus", "url": "http://${var.prom}:9090", "query": "up", "condition": {"max": 1}}],
     f"{P}.url: unknown template name '${{var.prom}}'; known: run_id, patch_id, target_version"),
    ("prometheus bad url", [{"name": "a", "kind": "prometheus", "url": "prometheus:9090", "query": "up", "condition": {"max": 1}}],
     f"{P}.url: 'prometheus:9090': expected an http:// or https:// URL with a host"),
    ("prometheus no condition", [{"name": "a", "kind": "prometheus", "url": "http://p:9090", "query": "up"}], f"{P}: 'condition' is required"),
    ("prometheus empty condition", [{"name": "a", "kind": "prometheus", "url": "http://p:9090", "query": "up", "condition": {}}],
     f"{P}.condition: give at least one of equals, not_equals, min, max"),
    ("prometheus latency", [{"name": "a", "kind": "prometheus", "url": "http://p:9090", "query": "up", "condition": {"max": 1}, "latency_ms": {"p95": 1}}],
     f"{P}.latency_ms: a prometheus check has no latency thresholds; put the latency in the query"),
]


@pytest.mark.parametrize(("spec", "message"), [case[1:] for case in ERRORS], ids=[case[0] for case in ERRORS])
def test_normalize_errors(spec: t.Any, message: str) -> None:
    with pytest.raises(CheckError) as exc:
        normalize_checks(spec)
    assert str(exc.value) == message


def test_check_error_is_a_value_error() -> None:
    assert issubclass(CheckError, ValueError)


def test_none_is_no_checks() -> None:
    assert normalize_checks(None) == []


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("items[?price > `10`].name | [0]", None),
        ("length(items)", None),
        ("", "empty expression"),
        ("items[?", "incomplete expression at column 7"),
        ("foo]", "Unexpected token: ] at column 3"),
        ("sum_of(items)", "unknown function sum_of()"),
        ("items[?length(name) > `1`].nope(x)", "unknown function nope()"),
    ],
)
def test_jmespath_error(expression: str, problem: str | None) -> None:
    assert jmespath_error(expression) == problem


# ---------------------------------------------------------------------------------------------------------
# templates


@pytest.mark.parametrize(
    ("text", "context", "rendered"),
    [
        ("http://${var.a}:${var.p}/x", {"var.a": "127.0.0.1", "var.p": 8080}, "http://127.0.0.1:8080/x"),
        ("${host}-$${literal}", {"host": "h1"}, "h1-${literal}"),
        ("price: $5 ${var.x}", {"var.x": [1, 2]}, "price: $5 [1, 2]"),
        ("no placeholders", {}, "no placeholders"),
    ],
)
def test_render(text: str, context: dict[str, t.Any], rendered: str) -> None:
    assert render(text, context) == rendered


def test_render_names_the_missing_value() -> None:
    with pytest.raises(KeyError) as exc:
        render("${var.nope}", {})
    assert exc.value.args == ("var.nope",)


def test_template_names_skips_literals() -> None:
    assert template_names("${host}/$${x}/${ var.a }", "w") == ["host", "var.a"]


@pytest.mark.parametrize(
    ("rc", "stdout", "problem"),
    [(0, "active\n", None), (3, "inactive\n", "exit code 3, expected 0"), (0, "failed\n", "output does not match '^active'")],
)
def test_judge_command(rc: int, stdout: str, problem: str | None) -> None:
    (check,) = normalize_checks([{"name": "c", "kind": "command", "command": ["systemctl", "is-active", "x"], "stdout_regex": "^active"}])
    assert judge_command(check, rc=rc, stdout=stdout) == problem


def test_sample_shape() -> None:
    assert sample("ok", 1.23456) == {"outcome": "ok", "latency_ms": 1.235, "reason": ""}
    assert sample("nodata", None, "empty", series=0) == {"outcome": "nodata", "latency_ms": None, "reason": "empty", "series": 0}
    with pytest.raises(ValueError, match="unknown sample outcome 'maybe'"):
        sample("maybe")


def test_pause_before_each_sample() -> None:
    (check,) = normalize_checks([{"name": "a", "kind": "tcp", "address": "x", "port": 1, "samples": 3, "interval": 0.5, "initial_delay": 2}])
    assert [pause_before(check, number) for number in range(3)] == [2.0, 0.5, 0.5]
    stored_before_initial_delay = {key: value for key, value in check.items() if key != "initial_delay"}
    assert pause_before(stored_before_initial_delay, 0) == 0.0


class FakeHost:
    """run_command_checks' side effects, recorded: commands answer from a table, time moves only when something waits."""

    def __init__(self, answers: dict[str, t.Any], missing: t.Collection[str] = ()) -> None:
        self.answers, self.missing = answers, set(missing)
        self.now, self.calls = 100.0, []  # type: ignore[var-annotated]

    def run(self, argv: list[str]) -> tuple[int, str, str]:
        self.calls.append(("run", argv))
        answer = self.answers[argv[-1]]
        if isinstance(answer, OSError):
            raise answer
        self.now += 0.25
        return answer

    def find(self, program: str) -> str | None:
        return None if program in self.missing else f"/usr/bin/{program}"

    def sleep(self, seconds: float) -> None:
        self.calls.append(("sleep", seconds))
        self.now += seconds

    def samples(self, checks: list[dict[str, t.Any]], *, timeout_bin: str | None = None) -> dict[str, list[dict[str, t.Any]]]:
        return run_command_checks(normalize_checks(checks), run=self.run, timeout_bin=timeout_bin, find=self.find, sleep=self.sleep,
                                  clock=lambda: self.now)


def test_run_command_checks_samples_each_check_with_its_pauses() -> None:
    host = FakeHost({"ok": (0, "active\n", ""), "bad": (2, "", "first\nlast line\n")})
    checks = [
        {"name": "a", "kind": "command", "command": ["check", "ok"], "samples": 2, "initial_delay": 1, "interval": 0.5},
        {"name": "b", "kind": "command", "command": "check bad", "samples": 1},
        {"name": "web", "url": "http://x/"},  # an http check: not the host's
    ]
    samples = host.samples(checks)
    assert samples == {
        "a": [sample("ok", 250.0), sample("ok", 250.0)],
        "b": [sample("error", 250.0, "exit code 2, expected 0: last line")],
    }
    assert host.calls == [("sleep", 1.0), ("run", ["check", "ok"]), ("sleep", 0.5), ("run", ["check", "ok"]), ("run", ["check", "bad"])]


def test_run_command_checks_behind_timeout() -> None:
    host = FakeHost({"slow": (124, "", ""), "killed": (137, "", ""), "fine": (0, "", "")})
    checks = [{"name": name, "kind": "command", "command": ["probe", name], "samples": 1, "timeout": 1.5} for name in ("slow", "killed", "fine")]
    samples = host.samples(checks, timeout_bin="/usr/bin/timeout")
    reasons = {name: items[0]["reason"] for name, items in samples.items()}
    assert reasons == {"slow": "timed out after 1.5 s", "killed": "timed out after 1.5 s", "fine": ""}
    assert host.calls[0] == ("run", ["/usr/bin/timeout", "--kill-after=1", "1.5", "probe", "slow"])
    # without timeout(1) an exit code 124 is an answer like any other
    assert FakeHost({"slow": (124, "", "")}).samples(checks[:1])["slow"][0]["reason"] == "exit code 124, expected 0"


def test_run_command_checks_never_raises_on_a_command_that_cannot_run() -> None:
    host = FakeHost({"gone": OSError(13, "Permission denied")}, missing={"nothere"})
    checks = [
        {"name": "missing", "kind": "command", "command": ["nothere", "x"], "samples": 2, "interval": 5},
        {"name": "denied", "kind": "command", "command": ["check", "gone"], "samples": 1},
    ]
    samples = host.samples(checks)
    assert samples["missing"] == [sample("unavailable", None, "cannot run nothere: not found or not executable")] * 2
    assert samples["denied"] == [sample("unavailable", 0.0, "cannot run check: [Errno 13] Permission denied")]
    # a program that is not there is never started, and its samples do not wait their interval
    assert host.calls == [("run", ["check", "gone"])]
