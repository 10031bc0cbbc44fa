# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: turning check samples into pass, fail or inconclusive. Not a public API.

Semantics borrowed from canary analysis tools (Kayenta, Argo Rollouts analysis):

* no data is never a pass: a check without a measured sample is *inconclusive*, unless the check says
  ``must_have_data: false`` (then it passes, and says why);
* a limit on consecutive errors: ``max_consecutive_errors`` fails a check whose longest run of bad samples
  (errors, or measurements that could not be taken) is longer, whatever its error rate;
* a baseline comparison needs a baseline: without one the comparison is inconclusive (or skipped when
  ``must_have_data`` is false);
* every result carries the measured values next to the thresholds that applied, and the conditions that fired.

Plain data in, plain data out; samples come from ``_checks.sample``.
"""

from __future__ import annotations

import dataclasses
import math
import typing as t

__all__ = [
    "CheckOutcome",
    "FLEET",
    "combine",
    "compact",
    "evaluate",
    "longest_run",
    "percentile",
    "pick_control_hosts",
    "summarize",
]

PASS = "pass"
FAIL = "fail"
INCONCLUSIVE = "inconclusive"
STATUSES = (PASS, INCONCLUSIVE, FAIL)  # worst last
FLEET = "*"  # the host of a fleet-wide (metric) check result


def percentile(values: t.Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of values; None without values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return round(ordered[min(rank, len(ordered)) - 1], 3)


def longest_run(samples: t.Sequence[t.Mapping[str, t.Any]], outcomes: t.Collection[str]) -> int:
    longest = current = 0
    for item in samples:
        current = current + 1 if item["outcome"] in outcomes else 0
        longest = max(longest, current)
    return longest


def summarize(samples: t.Sequence[t.Mapping[str, t.Any]]) -> dict[str, t.Any]:
    """Counts, error rate over measured samples, longest bad run and latency percentiles."""
    counts = {outcome: sum(1 for item in samples if item["outcome"] == outcome) for outcome in ("ok", "error", "nodata", "unavailable")}
    measured = counts["ok"] + counts["error"]
    latencies = [float(item["latency_ms"]) for item in samples if item["outcome"] in ("ok", "error") and item.get("latency_ms") is not None]
    values = [item["value"] for item in samples if item.get("value") is not None]
    summary: dict[str, t.Any] = {
        "samples": len(samples),
        "measured": measured,
        "errors": counts["error"],
        "nodata": counts["nodata"],
        "unavailable": counts["unavailable"],
        "error_rate": round(counts["error"] / measured, 4) if measured else None,
        "consecutive_errors": longest_run(samples, ("error", "unavailable")),
        "latency_ms": (
            {"p50": percentile(latencies, 50), "p90": percentile(latencies, 90), "p95": percentile(latencies, 95),
             "p99": percentile(latencies, 99), "max": round(max(latencies), 3)}
            if latencies else None
        ),
    }
    if values:
        summary["values"] = values
    return summary


def _reasons(samples: t.Sequence[t.Mapping[str, t.Any]], limit: int = 3) -> list[str]:
    seen: list[str] = []
    for item in samples:
        reason = item.get("reason")
        if item["outcome"] != "ok" and reason and reason not in seen:
            seen.append(reason)
            if len(seen) == limit:
                break
    return seen


def _fmt(value: t.Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def condition(name: str, op: str, measured: t.Any, threshold: t.Any, status: str, **extra: t.Any) -> dict[str, t.Any]:
    record = {"condition": f"{name} {op} {_fmt(threshold)}", "name": name, "op": op, "measured": measured, "threshold": threshold, "status": status}
    record.update(extra)
    return record


def _holds(measured: float, op: str, threshold: float) -> bool:
    return measured <= threshold if op == "<=" else measured >= threshold


def _compare(name: str, measured: float | None, op: str, threshold: float, **extra: t.Any) -> dict[str, t.Any]:
    if measured is None:
        return condition(name, op, None, threshold, INCONCLUSIVE, note="no measured value", **extra)
    return condition(name, op, measured, threshold, PASS if _holds(measured, op, threshold) else FAIL, **extra)


def _reference_conditions(
    prefix: str,
    spec: t.Mapping[str, t.Any],
    post: t.Mapping[str, t.Any],
    post_latencies: t.Sequence[float],
    reference: t.Sequence[t.Mapping[str, t.Any]] | None,
    *,
    must_have_data: bool,
    missing_note: str,
) -> list[dict[str, t.Any]]:
    """Conditions of the post-patch samples against reference samples (the baseline, or unpatched hosts)."""
    ref = summarize(reference or [])
    if not ref["measured"]:
        status = INCONCLUSIVE if must_have_data else PASS
        note = f"{missing_note}; must_have_data is false, comparison skipped" if not must_have_data else missing_note
        return [condition(f"{prefix}", "has", 0, "data", status, note=note)]
    conditions = []
    q = spec["percentile"]
    if spec["latency_ratio"] is not None:
        ref_latencies = [float(item["latency_ms"]) for item in reference or [] if item["outcome"] in ("ok", "error") and item.get("latency_ms") is not None]
        ref_p = percentile(ref_latencies, q)
        post_p = percentile(post_latencies, q)
        if ref_p is None:
            conditions.append(condition(f"{prefix}.p{q:g}", "<=", post_p, None, INCONCLUSIVE, note="reference has no latency"))
        else:
            threshold = round(max(ref_p * spec["latency_ratio"], ref_p + spec["min_delta_ms"]), 3)
            conditions.append(
                _compare(f"{prefix}.p{q:g}", post_p, "<=", threshold, reference=ref_p, ratio=spec["latency_ratio"], min_delta_ms=spec["min_delta_ms"])
            )
    if spec["error_rate_delta"] is not None:
        threshold = round(min(1.0, ref["error_rate"] + spec["error_rate_delta"]), 4)
        conditions.append(_compare(f"{prefix}.error_rate", post["error_rate"], "<=", threshold, reference=ref["error_rate"], delta=spec["error_rate_delta"]))
    return conditions


def evaluate(
    check: t.Mapping[str, t.Any],
    host: str,
    samples: t.Sequence[t.Mapping[str, t.Any]],
    *,
    baseline: t.Sequence[t.Mapping[str, t.Any]] | None = None,
    control: t.Sequence[t.Mapping[str, t.Any]] | None = None,
    control_hosts: t.Sequence[str] = (),
) -> dict[str, t.Any]:
    """Judge one check on one host (or the fleet, host ``*``): status, measured values, thresholds, conditions.

    baseline: this host's pre-patch samples (None: none were captured). control: samples taken at the same time on
    hosts not yet patched (only compared when the check asks for control hosts and some were sampled).
    """
    summary = summarize(samples)
    conditions: list[dict[str, t.Any]] = []
    limit = check.get("max_consecutive_errors")
    must_have_data = check.get("must_have_data", True)
    if limit is not None:
        run = summary["consecutive_errors"]
        conditions.append(condition("consecutive_errors", "<=", run, limit, PASS if run <= limit else FAIL))
    if not summary["measured"]:
        if summary["unavailable"] and not summary["nodata"]:
            note = f"no measurement succeeded ({summary['unavailable']} of {summary['samples']} unavailable)"
        else:
            note = f"no data ({summary['samples']} samples, none measured)"
        status = PASS if must_have_data is False and summary["nodata"] and not summary["unavailable"] else INCONCLUSIVE
        if status == PASS:
            note += "; must_have_data is false"
        conditions.append(condition("measured_samples", ">=", 0, 1, status, note=note))
    else:
        conditions.append(_compare("error_rate", summary["error_rate"], "<=", check["max_error_rate"]))
        latency = summary["latency_ms"] or {}
        for key, threshold in check.get("latency_ms", {}).items():
            conditions.append(_compare(f"latency_ms.{key}", latency.get(key), "<=", threshold))
        spec = check.get("baseline")
        if spec:
            latencies = [float(item["latency_ms"]) for item in samples if item["outcome"] in ("ok", "error") and item.get("latency_ms") is not None]
            conditions += _reference_conditions(
                "baseline", spec, summary, latencies, baseline, must_have_data=must_have_data, missing_note="no pre-patch baseline for this host"
            )
            if spec["control_hosts"] and control:
                conditions += [
                    dict(item, hosts=list(control_hosts))
                    for item in _reference_conditions(
                        "control", spec, summary, latencies, control, must_have_data=False, missing_note="no samples from unpatched hosts"
                    )
                ]
    statuses = [item["status"] for item in conditions]
    status = FAIL if FAIL in statuses else INCONCLUSIVE if INCONCLUSIVE in statuses else PASS
    result: dict[str, t.Any] = {"check": check["name"], "kind": check["kind"], "host": host, "status": status}
    result.update(summary)
    result["conditions"] = conditions
    result["seen"] = _reasons(samples)
    result["reason"] = describe(result)
    return result


def _condition_text(item: t.Mapping[str, t.Any]) -> str:
    if item.get("note"):
        return item["note"] if item["name"] in ("measured_samples", "baseline", "control") else f"{item['name']}: {item['note']}"
    op = {"<=": ">", ">=": "<"}.get(item["op"], item["op"]) if item["status"] == FAIL else item["op"]
    text = f"{item['name']} {_fmt(item['measured'])} {op} {_fmt(item['threshold'])}"
    if "reference" in item:
        scale = f"x{_fmt(item['ratio'])}" if "ratio" in item else f"+{_fmt(item['delta'])}"
        text += f" (reference {_fmt(item['reference'])}, {scale})"
    return text


def describe(result: t.Mapping[str, t.Any]) -> str:
    """One line that names the check, the host, what decided, the measured values and the thresholds."""
    where = f"check {result['check']}" + ("" if result["host"] == FLEET else f" on {result['host']}")
    shown = [item for item in result["conditions"] if result["status"] == PASS or item["status"] == result["status"]]
    detail = "; ".join(_condition_text(item) for item in shown)
    bad = result["errors"] + result["unavailable"]
    if bad and result["seen"]:
        detail += f" ({bad} of {result['samples']} samples bad: {'; '.join(result['seen'])})"
    return f"{where}: {result['status']}: {detail}"


@dataclasses.dataclass(frozen=True)
class CheckOutcome:
    """What a gate needs from all check results of one evaluation."""

    status: str
    host_failures: dict[str, str]  # host -> reason of its first failed check
    fleet_failures: tuple[str, ...]  # reasons of failed fleet-wide checks
    inconclusive: tuple[str, ...]  # reasons of inconclusive checks (host or fleet)
    fired: tuple[dict[str, t.Any], ...]  # the conditions that decided, with check, host, measured and threshold

    def as_dict(self) -> dict[str, t.Any]:
        return {
            "status": self.status,
            "host_failures": dict(self.host_failures),
            "fleet_failures": list(self.fleet_failures),
            "inconclusive": list(self.inconclusive),
            "fired": [dict(item) for item in self.fired],
        }


def combine(results: t.Sequence[t.Mapping[str, t.Any]]) -> CheckOutcome:
    """Fold per-check results into the gate's view: failed hosts, fleet-wide failures, inconclusive checks."""
    host_failures: dict[str, str] = {}
    fleet_failures: list[str] = []
    inconclusive: list[str] = []
    fired: list[dict[str, t.Any]] = []
    for result in results:
        if result["status"] == PASS:
            continue
        for item in result["conditions"]:
            if item["status"] == result["status"]:
                fired.append(dict(item, check=result["check"], host=result["host"], result=result["status"]))
        if result["status"] == FAIL:
            if result["host"] == FLEET:
                fleet_failures.append(result["reason"])
            else:
                host_failures.setdefault(result["host"], result["reason"])
        else:
            inconclusive.append(result["reason"])
    status = FAIL if host_failures or fleet_failures else INCONCLUSIVE if inconclusive else PASS
    return CheckOutcome(status, host_failures, tuple(fleet_failures), tuple(inconclusive), tuple(fired))


def compact(result: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """A result for events and summaries: everything but the raw sample reasons beyond the first few."""
    keep = ("check", "kind", "host", "status", "samples", "measured", "errors", "nodata", "unavailable", "error_rate",
            "consecutive_errors", "latency_ms", "values", "conditions", "seen", "reason")
    return {key: result[key] for key in keep if key in result}


def pick_control_hosts(host_order: t.Sequence[str], *, exclude: t.Collection[str], count: int) -> list[str]:
    """Up to count hosts this run has not touched, in plan order (the next ones to be patched come first)."""
    if count <= 0:
        return []
    return [host for host in host_order if host not in exclude][:count]
