# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: synthetic check specs (validation, templates) and samples. Not a public API.

Host-side: ``patch_apply`` (option ``command_checks``, after the apply in the same execution) and the ``command_checks``
module validate their checks with ``normalize_checks`` and take their samples with ``run_command_checks``, so this file
holds what that needs and nothing the controller alone does (rendering a check for every host, judging HTTP and metric
answers, the rollout overview: ``plugin_utils/_checks.py``). Plain data in, plain data out; ``run_command_checks`` is
handed the one side effect it needs (running a command) by its caller.

Everything that can be wrong with a check spec is found by ``normalize_checks`` (structure, regexes, JMESPath syntax
and function names, template names), before any host is touched.

Templates are ``${name}``, so they never collide with Jinja (``{{ }}``) or JSON braces; ``$${`` is a literal ``${``.
Host checks know ``${host}``, ``${var.<host variable>}``, ``${capture.<name>}`` (captured by an earlier step of the
same journey) and the run's ``${run_id}``, ``${patch_id}``, ``${target_version}``. Metric queries know the run's
names plus ``${hosts_regex}`` (the checked hosts as an escaped PromQL regex alternation) and ``${wave}``.

A sample is ``{"outcome": ok | error | nodata | unavailable, "latency_ms": float | None, "reason": str}`` (metric
samples also carry ``value``): *error* is a bad answer (what a user would see), *nodata* an empty measurement,
*unavailable* a measurement that could not be taken (the metrics server did not answer).
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import time
import typing as t
import urllib.parse
from collections.abc import Mapping

from ansible_collections.fleetpatch.rollout.plugins.module_utils._errors import FleetpatchError

__all__ = [
    "ASSERT_OPS",
    "CONDITION_OPS",
    "CONTROLLER_KINDS",
    "CheckError",
    "FLEET_KINDS",
    "HOST_KINDS",
    "MISSING",
    "RUN_NAMES",
    "jmespath_error",
    "judge_command",
    "normalize_checks",
    "parse_port",
    "pause_before",
    "render",
    "run_command_checks",
    "sample",
    "strings_in",
    "template_names",
    "url_problem",
]

CHECK_KINDS = ("http", "tcp", "dns", "command", "prometheus")
CONTROLLER_KINDS = ("http", "tcp", "dns")  # run from the controller against every host
FLEET_KINDS = ("prometheus",)  # run once per gate, not per host
HOST_KINDS = ("command",)  # run on the host itself by a module
OUTCOMES = ("ok", "error", "nodata", "unavailable")
LATENCY_KEYS = ("p50", "p90", "p95", "p99", "max")
ASSERT_OPS = ("equals", "not_equals", "min", "max", "matches", "truthy", "exists")
CONDITION_OPS = ("equals", "not_equals", "min", "max")
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
FAMILIES = ("any", "ipv4", "ipv6")
RUN_NAMES = ("run_id", "patch_id", "target_version")
HOST_NAMES = ("host",) + RUN_NAMES
FLEET_NAMES = ("hosts_regex", "wave") + RUN_NAMES
MISSING: t.Any = object()  # a template name without a value (render) or a host variable that is not set

_COMMON_KEYS = (
    "baseline",
    "description",
    "initial_delay",
    "interval",
    "kind",
    "latency_ms",
    "max_consecutive_errors",
    "max_error_rate",
    "must_have_data",
    "name",
    "samples",
    "timeout",
)
_STEP_KEYS = ("body", "capture", "expect", "headers", "json", "method", "name", "url", "validate_certs")
_KIND_KEYS: dict[str, tuple[str, ...]] = {
    "http": tuple(sorted(_COMMON_KEYS + ("steps",) + tuple(key for key in _STEP_KEYS if key != "name"))),
    "tcp": tuple(sorted(_COMMON_KEYS + ("address", "port"))),
    "dns": tuple(sorted(_COMMON_KEYS + ("expect_addresses", "family", "hostname"))),
    "command": tuple(sorted(_COMMON_KEYS + ("command", "expect_rc", "stdout_regex"))),
    "prometheus": tuple(sorted(_COMMON_KEYS + ("condition", "query", "url"))),
}
_EXPECT_KEYS = ("body_regex", "json", "max_latency_ms", "status")
_BASELINE_KEYS = ("control_hosts", "error_rate_delta", "latency_ratio", "min_delta_ms", "percentile")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TEMPLATE_RE = re.compile(r"\$(\$)?\{([^}]*)\}")
_MAX_SAMPLES = 1000
_MAX_INITIAL_DELAY = 3600  # an hour: longer waits belong in bake_seconds


def pause_before(check: t.Mapping[str, t.Any], number: int) -> float:
    """Seconds to wait before sample number (0-based): initial_delay before the first, interval between the others.
    Checks normalized before initial_delay existed (a resumed run's stored plan) have none."""
    return float(check.get("initial_delay") or 0) if number == 0 else float(check["interval"] or 0)


class CheckError(FleetpatchError, ValueError):
    """A check spec that cannot be run. The message names the policy path of the offending value."""


# ---------------------------------------------------------------------------------------------------------
# small validators


def _type_name(value: t.Any) -> str:
    if value is None:
        return "None"
    return next(cls.__name__ for cls in type(value).__mro__ if cls.__module__ == "builtins")


def _mapping(value: t.Any, where: str) -> Mapping[t.Any, t.Any]:
    if not isinstance(value, Mapping):
        raise CheckError(f"{where} must be a mapping, got {_type_name(value)}")
    return value


def _list(value: t.Any, where: str) -> list[t.Any]:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple)):
        raise CheckError(f"{where} must be a list, got {_type_name(value)}")
    return list(value)


def _unknown_keys(data: Mapping[t.Any, t.Any], allowed: t.Sequence[str], where: str) -> None:
    unknown = sorted(str(key) for key in data if key not in allowed)
    if unknown:
        names = ", ".join(repr(key) for key in unknown)
        noun = "key" if len(unknown) == 1 else "keys"
        raise CheckError(f"{where}: unknown {noun} {names}; allowed: {', '.join(allowed)}")


def _string(value: t.Any, where: str, *, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise CheckError(f"{where} must be a string, got {_type_name(value)}")
    if not value and not empty:
        raise CheckError(f"{where} must be a non-empty string")
    return str(value)


def _bool(value: t.Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise CheckError(f"{where} must be true or false, got {_type_name(value)}")
    return value


def _int(value: t.Any, where: str, *, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CheckError(f"{where} must be an integer, got {_type_name(value)}")
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise CheckError(f"{where} must be {bounds}, got {value}")
    return int(value)


def _number(value: t.Any, where: str, *, minimum: float = 0.0, positive: bool = False, maximum: float | None = None) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CheckError(f"{where} must be a number, got {_type_name(value)}")
    if value < minimum or (positive and value <= 0) or (maximum is not None and value > maximum):
        if positive:
            bounds = "> 0"
        elif maximum is not None:
            bounds = f"between {minimum:g} and {maximum:g}"
        else:
            bounds = f">= {minimum:g}"
        raise CheckError(f"{where} must be {bounds}, got {value}")
    return int(value) if float(value).is_integer() else float(value)


def _fraction(value: t.Any, where: str) -> int | float:
    """A rate as a fraction 0..1, or a percent string such as '5%'."""
    if isinstance(value, str):
        match = re.match(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$", value)
        if not match:
            raise CheckError(f"{where} must be a fraction such as 0.05 or a percent such as '5%', got {value!r}")
        value = float(match.group(1)) / 100
        if value > 1:
            raise CheckError(f"{where} must be between 0 and 1 (0% to 100%), got {match.group(1)}%")
        value = round(value, 6)
    return _number(value, where, maximum=1.0)


def _regex(value: t.Any, where: str) -> str:
    text = _string(value, where)
    try:
        re.compile(text)
    except re.error as exc:
        raise CheckError(f"{where}: invalid regular expression {text!r}: {exc}") from None
    return text


# ---------------------------------------------------------------------------------------------------------
# JMESPath


def _jmespath_module() -> t.Any:
    """The jmespath library, or None. Imported on first use: a host that only runs command checks never loads it."""
    try:
        import jmespath
        import jmespath.exceptions
        import jmespath.functions
    except ImportError:  # pragma: no cover - jmespath is a controller requirement of the collection
        return None
    return jmespath


def _jmespath_functions() -> frozenset[str]:
    jmespath = _jmespath_module()
    return frozenset(jmespath.functions.Functions.FUNCTION_TABLE) if jmespath is not None else frozenset()


def _function_names(node: t.Any) -> t.Iterator[str]:
    if isinstance(node, dict):
        if node.get("type") == "function_expression":
            yield str(node.get("value"))
        for child in node.get("children", []):
            yield from _function_names(child)
    elif isinstance(node, list):
        for child in node:
            yield from _function_names(child)


def jmespath_error(expression: str) -> str | None:
    """Why expression is not valid JMESPath (syntax or an unknown function), or None."""
    jmespath = _jmespath_module()
    if jmespath is None:
        return "the jmespath Python library is not installed on the controller"
    try:
        compiled = jmespath.compile(expression)
    except jmespath.exceptions.EmptyExpressionError:
        return "empty expression"
    except jmespath.exceptions.IncompleteExpressionError as exc:
        return f"incomplete expression at column {exc.lex_position}"
    except jmespath.exceptions.LexerError as exc:
        return f"{exc.message} at column {exc.lex_position}"
    except jmespath.exceptions.ParseError as exc:
        return f"{exc.msg} at column {exc.lex_position}"
    known = _jmespath_functions()
    for name in _function_names(compiled.parsed):
        if name not in known:
            return f"unknown function {name}()"
    return None


def _jmespath(value: t.Any, where: str) -> str:
    text = _string(value, where)
    problem = jmespath_error(text)
    if problem:
        raise CheckError(f"{where}: invalid JMESPath expression {text!r}: {problem}")
    return text


# ---------------------------------------------------------------------------------------------------------
# templates


def template_names(text: str, where: str) -> list[str]:
    """The ``${...}`` names used in text, in order; raises on an unterminated or empty placeholder."""
    names = []
    for match in _TEMPLATE_RE.finditer(text):
        if match.group(1):
            continue
        name = match.group(2).strip()
        if not name:
            raise CheckError(f"{where}: empty template placeholder '${{}}' in {text!r}")
        names.append(name)
    stripped = _TEMPLATE_RE.sub("", text)
    if "${" in stripped:
        raise CheckError(f"{where}: unterminated template placeholder in {text!r}; write '$${{' for a literal '${{'")
    return names


def _check_names(text: str, where: str, *, allowed: tuple[str, ...], captures: t.Collection[str] | None) -> None:
    for name in template_names(text, where):
        namespace, dot, rest = name.partition(".")
        if dot and namespace == "var" and captures is not None:
            if not _IDENT_RE.fullmatch(rest):
                raise CheckError(f"{where}: '${{{name}}}' does not name a host variable")
            continue
        if dot and namespace == "capture" and captures is not None:
            if rest not in captures:
                known = ", ".join(sorted(captures)) or "none"
                raise CheckError(f"{where}: '${{{name}}}' is not captured by an earlier step (captured so far: {known})")
            continue
        if name not in allowed:
            extra = ", var.<host variable>, capture.<name>" if captures is not None else ""
            raise CheckError(f"{where}: unknown template name '${{{name}}}'; known: {', '.join(allowed)}{extra}")


def render(text: str, context: Mapping[str, t.Any]) -> str:
    """Fill ``${name}`` placeholders from context (``var.x`` and ``capture.x`` are flat keys); KeyError names a gap."""

    def value(match: re.Match[str]) -> str:
        if match.group(1):
            return "${" + match.group(2) + "}"
        name = match.group(2).strip()
        found = context.get(name, MISSING)
        if found is MISSING:
            raise KeyError(name)
        if isinstance(found, str):
            return found
        return json.dumps(found, sort_keys=True) if isinstance(found, (dict, list)) else str(found)

    return _TEMPLATE_RE.sub(value, text)


# ---------------------------------------------------------------------------------------------------------
# spec normalisation


def _latency(value: t.Any, where: str) -> dict[str, int | float]:
    data = _mapping(value, where)
    _unknown_keys(data, LATENCY_KEYS, where)
    return {key: _number(data[key], f"{where}.{key}", positive=True) for key in LATENCY_KEYS if data.get(key) is not None}


def _baseline(value: t.Any, where: str) -> dict[str, t.Any] | None:
    if value is None or value is False:
        return None
    data = _mapping({} if value is True else value, where)
    _unknown_keys(data, _BASELINE_KEYS, where)
    ratio = data.get("latency_ratio", 1.2)
    delta = data.get("error_rate_delta", 0)
    baseline = {
        "latency_ratio": None if ratio is None else _number(ratio, f"{where}.latency_ratio", minimum=1.0),
        "percentile": _number(data.get("percentile", 95), f"{where}.percentile", minimum=1, maximum=100),
        "min_delta_ms": _number(data.get("min_delta_ms", 50), f"{where}.min_delta_ms"),
        "error_rate_delta": None if delta is None else _fraction(delta, f"{where}.error_rate_delta"),
        "control_hosts": _int(data.get("control_hosts", 0), f"{where}.control_hosts", minimum=0, maximum=100),
    }
    if baseline["latency_ratio"] is None and baseline["error_rate_delta"] is None:
        raise CheckError(f"{where}: compares nothing; set latency_ratio and/or error_rate_delta")
    return baseline


def _assertion(value: t.Any, where: str, *, ops: tuple[str, ...] = ASSERT_OPS) -> dict[str, t.Any]:
    if isinstance(value, str):
        return {"query": _jmespath(value, where), "truthy": True}
    data = _mapping(value, where)
    _unknown_keys(data, ("query",) + ops, where)
    if "query" not in data:
        raise CheckError(f"{where}: 'query' (a JMESPath expression) is required")
    assertion: dict[str, t.Any] = {"query": _jmespath(data["query"], f"{where}.query")}
    given = [op for op in ops if op in data]
    if not given:
        raise CheckError(f"{where}: give at least one of {', '.join(ops)}")
    for op in given:
        operand = data[op]
        if op in ("min", "max"):
            assertion[op] = _number(operand, f"{where}.{op}", minimum=-math.inf)
        elif op == "matches":
            assertion[op] = _regex(operand, f"{where}.{op}")
        elif op in ("truthy", "exists"):
            assertion[op] = _bool(operand, f"{where}.{op}")
        else:
            try:
                json.dumps(operand)
            except (TypeError, ValueError):
                raise CheckError(f"{where}.{op} must be plain data (string, number, list, mapping)") from None
            assertion[op] = operand
    return assertion


def _condition(value: t.Any, where: str) -> dict[str, t.Any]:
    data = _mapping(value, where)
    _unknown_keys(data, CONDITION_OPS, where)
    if not data:
        raise CheckError(f"{where}: give at least one of {', '.join(CONDITION_OPS)}")
    return {op: _number(data[op], f"{where}.{op}", minimum=-math.inf) for op in CONDITION_OPS if op in data}


def _status_list(value: t.Any, where: str) -> list[int]:
    items = value if isinstance(value, (list, tuple)) else [value]
    codes = [_int(item, f"{where}", minimum=100, maximum=599) for item in items]
    if not codes:
        raise CheckError(f"{where} must list at least one HTTP status")
    return sorted(set(codes))


def _step(value: t.Any, where: str, index: int, captured: set[str]) -> dict[str, t.Any]:
    data = _mapping(value, where)
    _unknown_keys(data, _STEP_KEYS, where)
    name = data.get("name", f"step-{index + 1}")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise CheckError(f"{where}.name must be letters, digits, '.', '_' or '-' (at most 64), got {name!r}")
    method = _string(data.get("method", "GET"), f"{where}.method").upper()
    if method not in METHODS:
        raise CheckError(f"{where}.method: expected one of {', '.join(METHODS)}, got {data.get('method')!r}")
    if "url" not in data:
        raise CheckError(f"{where}: 'url' is required")
    url = _string(data["url"], f"{where}.url")
    _check_names(url, f"{where}.url", allowed=HOST_NAMES, captures=captured)
    if not re.match(r"^(https?://|\$\{)", url, re.IGNORECASE):
        raise CheckError(f"{where}.url: expected an http:// or https:// URL, got {url!r}")
    if re.search(r"\s", url):
        raise CheckError(f"{where}.url: {url[:40]!r} contains whitespace; percent-encode it (%20)")
    headers: dict[str, str] = {}
    for key, header in _mapping(data.get("headers") or {}, f"{where}.headers").items():
        if not isinstance(key, str) or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", key):
            raise CheckError(f"{where}.headers: {key!r} is not a valid header name")
        if isinstance(header, (int, float)) and not isinstance(header, bool):
            header = str(header)
        headers[str(key)] = _string(header, f"{where}.headers.{key}", empty=True)
        if re.search(r"[\r\n\x00]", headers[str(key)]):
            raise CheckError(f"{where}.headers.{key}: a header value must be one line (no CR, LF or NUL)")
        _check_names(headers[str(key)], f"{where}.headers.{key}", allowed=HOST_NAMES, captures=captured)
    if "body" in data and "json" in data:
        raise CheckError(f"{where}: give 'body' or 'json', not both")
    step: dict[str, t.Any] = {"name": name, "method": method, "url": url, "headers": headers}
    if data.get("body") is not None:
        step["body"] = _string(data["body"], f"{where}.body", empty=True)
        _check_names(step["body"], f"{where}.body", allowed=HOST_NAMES, captures=captured)
    if data.get("json") is not None:
        try:
            step["json"] = json.loads(json.dumps(data["json"]))
        except (TypeError, ValueError):
            raise CheckError(f"{where}.json must be plain data (string, number, list, mapping)") from None
        for text in strings_in(step["json"]):
            _check_names(text, f"{where}.json", allowed=HOST_NAMES, captures=captured)
    step["validate_certs"] = _bool(data.get("validate_certs", True), f"{where}.validate_certs")
    expect_data = _mapping(data.get("expect") or {}, f"{where}.expect")
    _unknown_keys(expect_data, _EXPECT_KEYS, f"{where}.expect")
    expect: dict[str, t.Any] = {"status": _status_list(expect_data.get("status", 200), f"{where}.expect.status")}
    if expect_data.get("body_regex") is not None:
        expect["body_regex"] = _regex(expect_data["body_regex"], f"{where}.expect.body_regex")
    expect["json"] = [
        _assertion(item, f"{where}.expect.json[{number}]") for number, item in enumerate(_list(expect_data.get("json") or [], f"{where}.expect.json"))
    ]
    if expect_data.get("max_latency_ms") is not None:
        expect["max_latency_ms"] = _number(expect_data["max_latency_ms"], f"{where}.expect.max_latency_ms", positive=True)
    step["expect"] = expect
    capture: dict[str, str] = {}
    for key, query in _mapping(data.get("capture") or {}, f"{where}.capture").items():
        if not isinstance(key, str) or not _IDENT_RE.fullmatch(key):
            raise CheckError(f"{where}.capture: {key!r} is not a name (letters, digits, '_')")
        capture[key] = _jmespath(query, f"{where}.capture.{key}")
    step["capture"] = capture
    captured.update(capture)
    return step


def strings_in(value: t.Any) -> t.Iterator[str]:
    """Every string inside plain JSON data (a template may hide in any of them)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings_in(item)


def _normalize_check(value: t.Any, where: str) -> dict[str, t.Any]:
    data = _mapping(value, where)
    name = data.get("name")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise CheckError(f"{where}.name must be letters, digits, '.', '_' or '-' (at most 64), got {name!r}")
    where = f"{where} ({name})"
    kind = data.get("kind", "http")
    if kind not in CHECK_KINDS:
        shown = repr(kind) if isinstance(kind, str) else _type_name(kind)
        raise CheckError(f"{where}.kind: expected one of {', '.join(CHECK_KINDS)}, got {shown}")
    _unknown_keys(data, _KIND_KEYS[kind], where)
    check: dict[str, t.Any] = {
        "name": name,
        "kind": kind,
        "samples": _int(data.get("samples", 3), f"{where}.samples", minimum=1, maximum=_MAX_SAMPLES),
        "interval": _number(data.get("interval", 0), f"{where}.interval"),
        "initial_delay": _number(data.get("initial_delay", 0), f"{where}.initial_delay", maximum=_MAX_INITIAL_DELAY),
        "timeout": _number(data.get("timeout", 5), f"{where}.timeout", positive=True),
        "max_error_rate": _fraction(data.get("max_error_rate", 0), f"{where}.max_error_rate"),
        "max_consecutive_errors": (
            None if data.get("max_consecutive_errors") is None
            else _int(data["max_consecutive_errors"], f"{where}.max_consecutive_errors", minimum=0)
        ),
        "must_have_data": _bool(data.get("must_have_data", True), f"{where}.must_have_data"),
        "latency_ms": _latency(data.get("latency_ms") or {}, f"{where}.latency_ms"),
        "baseline": _baseline(data.get("baseline"), f"{where}.baseline"),
    }
    if data.get("description") is not None:
        check["description"] = _string(data["description"], f"{where}.description", empty=True)
    if kind in FLEET_KINDS + HOST_KINDS and check["baseline"] is not None:
        raise CheckError(f"{where}.baseline: only http, tcp and dns checks compare against a baseline")
    if kind == "prometheus" and check["latency_ms"]:
        raise CheckError(f"{where}.latency_ms: a prometheus check has no latency thresholds; put the latency in the query")
    getattr(_KindNormalizer, kind)(data, where, check)
    return check


class _KindNormalizer:
    """Per-kind fields, added to the common ones."""

    @staticmethod
    def http(data: Mapping[str, t.Any], where: str, check: dict[str, t.Any]) -> None:
        inline = {key: data[key] for key in _STEP_KEYS if key in data and key != "name"}
        if "steps" in data:
            if inline:
                raise CheckError(f"{where}: give 'steps' or a single request ({', '.join(sorted(inline))}), not both")
            raw = _list(data["steps"], f"{where}.steps")
            if not raw:
                raise CheckError(f"{where}.steps must list at least one request")
            steps_where = f"{where}.steps"
        else:
            if "url" not in inline:
                raise CheckError(f"{where}: an http check needs 'url' (one request) or 'steps' (a journey)")
            raw = [dict(inline, name=check["name"])]
            steps_where = f"{where}.request"
        captured: set[str] = set()
        steps = []
        for index, item in enumerate(raw):
            step_where = f"{steps_where}[{index}]" if "steps" in data else steps_where
            steps.append(_step(item, step_where, index, captured))
        names = [step["name"] for step in steps]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise CheckError(f"{where}.steps: step name(s) {', '.join(duplicates)} used twice")
        check["steps"] = steps

    @staticmethod
    def tcp(data: Mapping[str, t.Any], where: str, check: dict[str, t.Any]) -> None:
        for key in ("address", "port"):
            if key not in data:
                raise CheckError(f"{where}: '{key}' is required")
        check["address"] = _string(data["address"], f"{where}.address")
        _check_names(check["address"], f"{where}.address", allowed=HOST_NAMES, captures=())
        port = data["port"]
        if isinstance(port, str):
            _check_names(port, f"{where}.port", allowed=HOST_NAMES, captures=())
            if not template_names(port, f"{where}.port"):
                port = parse_port(port, f"{where}.port")
        else:
            port = parse_port(port, f"{where}.port")
        check["port"] = port

    @staticmethod
    def dns(data: Mapping[str, t.Any], where: str, check: dict[str, t.Any]) -> None:
        if "hostname" not in data:
            raise CheckError(f"{where}: 'hostname' (the name to resolve) is required")
        check["hostname"] = _string(data["hostname"], f"{where}.hostname")
        _check_names(check["hostname"], f"{where}.hostname", allowed=HOST_NAMES, captures=())
        family = data.get("family", "any")
        if family not in FAMILIES:
            raise CheckError(f"{where}.family: expected one of {', '.join(FAMILIES)}, got {family!r}")
        check["family"] = family
        addresses = _list(data.get("expect_addresses") or [], f"{where}.expect_addresses")
        check["expect_addresses"] = [_string(item, f"{where}.expect_addresses[{index}]") for index, item in enumerate(addresses)]
        for index, item in enumerate(check["expect_addresses"]):
            _check_names(item, f"{where}.expect_addresses[{index}]", allowed=HOST_NAMES, captures=())

    @staticmethod
    def command(data: Mapping[str, t.Any], where: str, check: dict[str, t.Any]) -> None:
        if "command" not in data:
            raise CheckError(f"{where}: 'command' (an argv list or a string) is required")
        command = data["command"]
        if isinstance(command, str):
            if not command.strip():
                raise CheckError(f"{where}.command must not be empty")
            try:
                shlex.split(command)
            except ValueError as exc:
                raise CheckError(f"{where}.command {command!r} cannot be split into arguments: {exc}") from None
            check["command"] = command
        else:
            argv = _list(command, f"{where}.command")
            if not argv:
                raise CheckError(f"{where}.command must not be empty")
            check["command"] = [_string(item, f"{where}.command[{index}]", empty=True) for index, item in enumerate(argv)]
        check["expect_rc"] = _int(data.get("expect_rc", 0), f"{where}.expect_rc", minimum=0, maximum=255)
        if data.get("stdout_regex") is not None:
            check["stdout_regex"] = _regex(data["stdout_regex"], f"{where}.stdout_regex")

    @staticmethod
    def prometheus(data: Mapping[str, t.Any], where: str, check: dict[str, t.Any]) -> None:
        for key in ("url", "query", "condition"):
            if key not in data:
                raise CheckError(f"{where}: '{key}' is required")
        check["url"] = _string(data["url"], f"{where}.url")
        _check_names(check["url"], f"{where}.url", allowed=RUN_NAMES, captures=None)
        problem = url_problem(render(check["url"], dict.fromkeys(RUN_NAMES, "x")))
        if problem:
            raise CheckError(f"{where}.url: {check['url']!r}: {problem}")
        check["query"] = _string(data["query"], f"{where}.query")
        _check_names(check["query"], f"{where}.query", allowed=FLEET_NAMES, captures=None)
        check["condition"] = _condition(data["condition"], f"{where}.condition")


def parse_port(value: t.Any, where: str) -> int:
    """A port number 1-65535 (an int or a string of digits); CheckError otherwise."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise CheckError(f"{where} must be a port number 1-65535, got {value!r}")
    return int(value)


def url_problem(url: str) -> str | None:
    """Why url cannot be requested (scheme, host, port), or None."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return "expected an http:// or https:// URL with a host"
    if port == 0:
        return "port 0 cannot be connected to"
    if any(char.isspace() for char in url):
        return "contains whitespace"
    return None


def normalize_checks(value: t.Any, where: str = "policy.checks") -> list[dict[str, t.Any]]:
    """Validate and fill defaults; the result is JSON-serialisable and idempotent under this function."""
    if value is None:
        return []
    checks = [_normalize_check(item, f"{where}[{index}]") for index, item in enumerate(_list(value, where))]
    names = [check["name"] for check in checks]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise CheckError(f"{where}: check name(s) {', '.join(duplicates)} used twice")
    return checks


# ---------------------------------------------------------------------------------------------------------
# samples


def sample(outcome: str, latency_ms: float | None = None, reason: str = "", **extra: t.Any) -> dict[str, t.Any]:
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown sample outcome {outcome!r}")
    record: dict[str, t.Any] = {"outcome": outcome, "latency_ms": None if latency_ms is None else round(latency_ms, 3), "reason": reason}
    record.update(extra)
    return record


def judge_command(check: Mapping[str, t.Any], *, rc: int, stdout: str) -> str | None:
    if rc != check["expect_rc"]:
        return f"exit code {rc}, expected {check['expect_rc']}"
    if "stdout_regex" in check and not re.search(check["stdout_regex"], stdout):
        return f"output does not match {check['stdout_regex']!r}"
    return None


# ---------------------------------------------------------------------------------------------------------
# command checks on the host

_TIMED_OUT = (124, 137)  # timeout(1): the command ran too long (124), or had to be killed after it (137)


def _command_argv(check: Mapping[str, t.Any]) -> list[str]:
    command = check["command"]
    return list(command) if isinstance(command, list) else shlex.split(command)


def _cannot_run(argv: list[str], *, find: t.Callable[[str], str | None]) -> str | None:
    """Why argv cannot be started on this host (as run_command would expand it), or None."""
    program = os.path.expandvars(os.path.expanduser(argv[0]))
    if find(program) is None:
        return f"cannot run {argv[0]}: not found or not executable"
    return None


def _command_samples(check: Mapping[str, t.Any], *, run: t.Callable[[list[str]], tuple[int, str, str]], timeout_bin: str | None,
                     find: t.Callable[[str], str | None], sleep: t.Callable[[float], None], clock: t.Callable[[], float]) -> list[dict[str, t.Any]]:
    argv = _command_argv(check)
    # checked before the first sample: behind timeout(1) a missing program would read as exit code 127, an answer
    problem = _cannot_run(argv, find=find)
    if problem:
        return [sample("unavailable", None, problem) for number in range(check["samples"])]
    if timeout_bin:
        argv = [timeout_bin, "--kill-after=1", f"{check['timeout']:g}"] + argv
    samples = []
    for number in range(check["samples"]):
        pause = pause_before(check, number)
        if pause:
            sleep(pause)
        started = clock()
        try:
            rc, stdout, stderr = run(argv)
        except OSError as exc:
            samples.append(sample("unavailable", (clock() - started) * 1000, f"cannot run {argv[0]}: {exc}"))
            continue
        latency = (clock() - started) * 1000
        if timeout_bin and rc in _TIMED_OUT:
            samples.append(sample("error", latency, f"timed out after {check['timeout']:g} s"))
            continue
        problem = judge_command(check, rc=rc, stdout=stdout)
        if problem and stderr.strip():
            problem += f": {stderr.strip().splitlines()[-1][:200]}"
        samples.append(sample("error" if problem else "ok", latency, problem or ""))
    return samples


def run_command_checks(checks: t.Sequence[Mapping[str, t.Any]], *, run: t.Callable[[list[str]], tuple[int, str, str]],
                       timeout_bin: str | None, find: t.Callable[[str], str | None] = shutil.which, sleep: t.Callable[[float], None] = time.sleep,
                       clock: t.Callable[[], float] = time.monotonic) -> dict[str, list[dict[str, t.Any]]]:
    """Check name to its samples, for every normalized check of a HOST_KINDS kind (the others are not the host's).

    run(argv) returns (rc, stdout, stderr) and raises OSError when the command cannot be started.

    A sample is ok or error by judge_command, error when timeout_bin (timeout(1), when the host has it) stopped the
    command after the check's timeout, and unavailable when the command cannot be started: never an exception.
    """
    return {
        check["name"]: _command_samples(check, run=run, timeout_bin=timeout_bin, find=find, sleep=sleep, clock=clock)
        for check in checks if check["kind"] in HOST_KINDS
    }
