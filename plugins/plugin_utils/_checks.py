# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: the controller side of synthetic checks. Not a public API.

What only the controller does with a check: render it for every target host (``validate_targets`` before any host is
touched, ``render_target`` when probing), evaluate JMESPath against answers, judge HTTP answers and metric values,
and the overview the rollout role needs. The spec itself (validation, templates, samples) is host-side, in
``module_utils/_checks.py``, because the ``command_checks`` module validates its own checks; the names of it that the
controller uses are re-exported here, so controller code imports checks from one place. Plain data in, plain data out.
"""

from __future__ import annotations

import functools
import json
import re
import typing as t
from collections.abc import Mapping

from ansible_collections.fleetpatch.rollout.plugins.module_utils._checks import (
    ASSERT_OPS,
    CONDITION_OPS,
    CONTROLLER_KINDS,
    FLEET_KINDS,
    HOST_KINDS,
    MISSING,
    RUN_NAMES,
    CheckError,
    normalize_checks,
    parse_port,
    pause_before,
    render,
    sample,
    strings_in,
    template_names,
    url_problem,
)

try:
    import jmespath
    import jmespath.exceptions
except ImportError:  # pragma: no cover - without it normalize_checks refuses every JMESPath expression, so search never runs
    jmespath = None

__all__ = [
    "CONTROLLER_KINDS",
    "CheckError",
    "FLEET_KINDS",
    "HOST_KINDS",
    "MISSING",
    "assertion_failure",
    "host_context",
    "judge_http",
    "judge_value",
    "normalize_checks",
    "overview",
    "pause_before",
    "promql_regex",
    "referenced_vars",
    "render",
    "render_json",
    "render_target",
    "sample",
    "template_names",
    "validate_targets",
]

_PROMQL_REGEX_SPECIALS = set(".^$*+?()[]{}|\\")


# ---------------------------------------------------------------------------------------------------------
# JMESPath and templates at run time


@functools.lru_cache(maxsize=512)
def _compiled(expression: str) -> t.Any:
    return jmespath.compile(expression)


def search(expression: str, data: t.Any) -> t.Any:
    """Evaluate a validated JMESPath expression; a type error at run time (length(5)) yields None."""
    try:
        return _compiled(expression).search(data)
    except jmespath.exceptions.JMESPathError:
        return None


def render_json(value: t.Any, context: Mapping[str, t.Any]) -> t.Any:
    if isinstance(value, str):
        return render(value, context)
    if isinstance(value, list):
        return [render_json(item, context) for item in value]
    if isinstance(value, dict):
        return {key: render_json(item, context) for key, item in value.items()}
    return value


def promql_regex(hosts: t.Iterable[str]) -> str:
    """Hosts as a regex alternation, escaped for RE2 inside a double-quoted PromQL string."""
    return "|".join("".join("\\\\" + char if char in _PROMQL_REGEX_SPECIALS else char for char in host) for host in hosts)


# ---------------------------------------------------------------------------------------------------------
# per-host validation and rendering


def referenced_vars(checks: t.Iterable[Mapping[str, t.Any]]) -> list[str]:
    """Host variables the checks' templates read (``${var.x}`` -> ``x``), sorted."""
    names: set[str] = set()
    for check in checks:
        for text in _template_fields(check):
            names.update(name[4:] for name in template_names(text, check["name"]) if name.startswith("var."))
    return sorted(names)


def _template_fields(check: Mapping[str, t.Any]) -> t.Iterator[str]:
    kind = check["kind"]
    if kind == "http":
        for step in check["steps"]:
            yield step["url"]
            yield from step["headers"].values()
            if "body" in step:
                yield step["body"]
            if "json" in step:
                yield from strings_in(step["json"])
    elif kind == "tcp":
        yield check["address"]
        if isinstance(check["port"], str):
            yield check["port"]
    elif kind == "dns":
        yield check["hostname"]
        yield from check["expect_addresses"]


def host_context(host: str, variables: Mapping[str, t.Any], run: Mapping[str, t.Any]) -> dict[str, t.Any]:
    """Template names of one host: ``host``, the run's names, and ``var.<name>`` for the variables given."""
    context: dict[str, t.Any] = {name: run[name] for name in RUN_NAMES if name in run}
    context["host"] = host
    context.update({f"var.{name}": value for name, value in variables.items() if value is not MISSING})
    return context


def _render_where(text: str, context: Mapping[str, t.Any], where: str, host: str) -> str:
    try:
        return render(text, context)
    except KeyError as exc:
        name = exc.args[0]
        what = f"host variable {name[4:]!r} is not defined" if name.startswith("var.") else f"'${{{name}}}' has no value"
        raise CheckError(f"{where}: {text!r} for host {host!r}: {what}") from None


def render_target(check: Mapping[str, t.Any], context: Mapping[str, t.Any], where: str = "check") -> dict[str, t.Any]:
    """What a controller-side check connects to for one host; raises CheckError when a template cannot be filled.

    Steps after the first may use captures, which only exist at run time: their URLs are checked with the
    captures replaced by a placeholder.
    """
    host = str(context.get("host", "?"))
    kind = check["kind"]
    if kind == "http":
        urls = []
        for index, step in enumerate(check["steps"]):
            step_where = f"{where}.steps[{index}].url"
            probe = dict(context)
            for name in template_names(step["url"], step_where):
                if name.startswith("capture."):
                    probe[name] = "capture"
            url = _render_where(step["url"], probe, step_where, host)
            problem = url_problem(url)
            if problem:
                raise CheckError(f"{step_where}: {step['url']!r} renders to {url!r} for host {host!r}: {problem}")
            for key, header in step["headers"].items():
                if not any(name.startswith("capture.") for name in template_names(header, where)):
                    _render_where(header, context, f"{where}.steps[{index}].headers.{key}", host)
            urls.append(url)
        return {"urls": urls}
    if kind == "tcp":
        address = _render_where(check["address"], context, f"{where}.address", host)
        port = check["port"]
        if isinstance(port, str):
            port = parse_port(_render_where(port, context, f"{where}.port", host), f"{where}.port for host {host!r}")
        if not address.strip():
            raise CheckError(f"{where}.address: {check['address']!r} renders to an empty address for host {host!r}")
        return {"address": address, "port": port}
    if kind == "dns":
        hostname = _render_where(check["hostname"], context, f"{where}.hostname", host)
        if not hostname.strip():
            raise CheckError(f"{where}.hostname: {check['hostname']!r} renders to an empty name for host {host!r}")
        expected = [_render_where(item, context, f"{where}.expect_addresses", host) for item in check["expect_addresses"]]
        return {"hostname": hostname, "expect_addresses": expected}
    return {}


def validate_targets(checks: t.Sequence[Mapping[str, t.Any]], contexts: Mapping[str, Mapping[str, t.Any]], where: str = "policy.checks") -> None:
    """Render every controller-side check for every host; the first template that cannot be filled is an error."""
    for index, check in enumerate(checks):
        if check["kind"] not in CONTROLLER_KINDS:
            continue
        for host in contexts:
            render_target(check, contexts[host], f"{where}[{index}] ({check['name']})")


# ---------------------------------------------------------------------------------------------------------
# judging answers


def _short(value: t.Any, limit: int = 80) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def assertion_failure(assertion: Mapping[str, t.Any], document: t.Any) -> str | None:
    """Why a JSON document fails one assertion, or None when it holds."""
    query = assertion["query"]
    value = search(query, document)
    shown = f"json {query!r} = {_short(value)}"
    for op in ASSERT_OPS:
        if op not in assertion:
            continue
        expected = assertion[op]
        if op == "equals" and value != expected:
            return f"{shown}, expected == {_short(expected)}"
        if op == "not_equals" and value == expected:
            return f"{shown}, expected != {_short(expected)}"
        if op in ("min", "max"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"{shown}, expected a number {'>=' if op == 'min' else '<='} {expected:g}"
            if (op == "min" and value < expected) or (op == "max" and value > expected):
                return f"{shown}, expected {'>=' if op == 'min' else '<='} {expected:g}"
        if op == "matches" and (value is None or not re.search(expected, value if isinstance(value, str) else json.dumps(value))):
            return f"{shown}, expected to match {expected!r}"
        if op == "truthy" and bool(value not in (None, False, "", [], {})) is not expected:
            return f"{shown}, expected {'a true' if expected else 'a false'} value"
        if op == "exists" and (value is not None) is not expected:
            return f"{shown}, expected {'a value' if expected else 'nothing'}"
    return None


def judge_http(step: Mapping[str, t.Any], *, status: int, body: bytes, latency_ms: float) -> tuple[str | None, dict[str, t.Any]]:
    """(why the answer is an error or None, captured values) for one HTTP step."""
    expect = step["expect"]
    name = step["name"]
    if status not in expect["status"]:
        wanted = ", ".join(str(code) for code in expect["status"])
        return f"{name}: HTTP {status}, expected {wanted}", {}
    if "max_latency_ms" in expect and latency_ms > expect["max_latency_ms"]:
        return f"{name}: took {latency_ms:.1f} ms, expected <= {expect['max_latency_ms']:g} ms", {}
    text = body.decode("utf-8", "replace")
    if "body_regex" in expect and not re.search(expect["body_regex"], text):
        return f"{name}: body does not match {expect['body_regex']!r}", {}
    if not expect["json"] and not step["capture"]:
        return None, {}
    try:
        document = json.loads(text)
    except ValueError:
        return f"{name}: body is not JSON", {}
    for assertion in expect["json"]:
        problem = assertion_failure(assertion, document)
        if problem:
            return f"{name}: {problem}", {}
    captures: dict[str, t.Any] = {}
    for key, query in step["capture"].items():
        value = search(query, document)
        if value is None:
            return f"{name}: capture {key}: {query!r} found nothing", {}
        captures[f"capture.{key}"] = value
    return None, captures


def judge_value(condition: Mapping[str, t.Any], value: float) -> str | None:
    """Why a measured metric value breaks the condition, or None."""
    for op in CONDITION_OPS:
        if op not in condition:
            continue
        bound = condition[op]
        if op == "min" and not value >= bound:
            return f"value {value:g} < min {bound:g}"
        if op == "max" and not value <= bound:
            return f"value {value:g} > max {bound:g}"
        if op == "equals" and value != bound:
            return f"value {value:g} != {bound:g}"
        if op == "not_equals" and value == bound:
            return f"value {value:g} == {bound:g}"
    return None


def overview(checks: t.Sequence[Mapping[str, t.Any]]) -> dict[str, t.Any]:
    """What the rollout role needs to know: check names, whether to capture a baseline, the host-side checks."""
    return {
        "names": [check["name"] for check in checks],
        "baseline": any(check.get("baseline") for check in checks),
        "command": [dict(check) for check in checks if check["kind"] in HOST_KINDS],
    }
