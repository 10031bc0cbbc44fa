from __future__ import annotations

import typing as t

import pytest

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._analysis import (
    FLEET,
    combine,
    compact,
    evaluate,
    longest_run,
    percentile,
    pick_control_hosts,
    summarize,
)
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._checks import normalize_checks, sample


def check(**extra: t.Any) -> dict[str, t.Any]:
    (spec,) = normalize_checks([{"name": "items", "url": "http://x/", **extra}])
    return spec


def metric(**extra: t.Any) -> dict[str, t.Any]:
    (spec,) = normalize_checks([{"name": "errors", "kind": "prometheus", "url": "http://p:9090", "query": "q", "condition": {"max": 0.05}, **extra}])
    return spec


def oks(*latencies: float) -> list[dict[str, t.Any]]:
    return [sample("ok", latency) for latency in latencies]


def errs(count: int, latency: float | None = 5.0, reason: str = "items: HTTP 500, expected 200") -> list[dict[str, t.Any]]:
    return [sample("error", latency, reason)] * count


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([], 95, None),
        ([7.0], 50, 7.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.0),
        ([1.0, 2.0, 3.0, 4.0], 95, 4.0),
        ([5.0, 1.0, 3.0], 0, 1.0),
        ([float(n) for n in range(1, 101)], 90, 90.0),
    ],
)
def test_percentile_is_nearest_rank(values: list[float], q: float, expected: float | None) -> None:
    assert percentile(values, q) == expected


def test_longest_run() -> None:
    run = oks(1) + errs(2) + oks(1) + errs(3) + [sample("unavailable")]
    assert longest_run(run, ("error", "unavailable")) == 4
    assert longest_run(oks(1, 2), ("error",)) == 0


def test_summarize() -> None:
    summary = summarize(oks(10, 20, 30) + errs(1, 40) + [sample("error", None, "refused"), sample("nodata")])
    assert summary == {
        "samples": 6,
        "measured": 5,
        "errors": 2,
        "nodata": 1,
        "unavailable": 0,
        "error_rate": 0.4,
        "consecutive_errors": 2,
        "latency_ms": {"p50": 20.0, "p90": 40.0, "p95": 40.0, "p99": 40.0, "max": 40.0},
    }


CASES: list[tuple[str, dict[str, t.Any], list[dict[str, t.Any]], dict[str, t.Any], str, str]] = [
    ("all good", check(latency_ms={"p95": 100}), oks(10, 12, 11), {},
     "pass", "check items on h1: pass: error_rate 0 <= 0; latency_ms.p95 12 <= 100"),
    ("errors fail", check(), oks(10) + errs(2), {},
     "fail", "check items on h1: fail: error_rate 0.6667 > 0 (2 of 3 samples bad: items: HTTP 500, expected 200)"),
    ("errors under the allowed rate", check(max_error_rate="50%"), oks(10, 10, 10) + errs(1), {},
     "pass", "check items on h1: pass: error_rate 0.25 <= 0.5 (1 of 4 samples bad: items: HTTP 500, expected 200)"),
    ("consecutive errors over the limit fail under the rate", check(max_error_rate=0.5, max_consecutive_errors=1), oks(1, 1, 1) + errs(2), {},
     "fail", "check items on h1: fail: consecutive_errors 2 > 1 (2 of 5 samples bad: items: HTTP 500, expected 200)"),
    ("slow fails the latency threshold", check(latency_ms={"p95": 100, "max": 1000}), oks(50, 60, 300), {},
     "fail", "check items on h1: fail: latency_ms.p95 300 > 100"),
    ("no samples is inconclusive", check(), [], {},
     "inconclusive", "check items on h1: inconclusive: no data (0 samples, none measured)"),
    ("slower than baseline fails", check(baseline=True), oks(300, 310, 305), {"baseline": oks(10, 11, 12)},
     "fail", "check items on h1: fail: baseline.p95 310 > 62 (reference 12, x1.2)"),
    ("ratio wins over the absolute slack", check(baseline={"min_delta_ms": 0}), oks(300, 310, 305), {"baseline": oks(200, 210, 220)},
     "fail", "check items on h1: fail: baseline.p95 310 > 264 (reference 220, x1.2)"),
    ("within baseline passes", check(baseline=True), oks(12, 14, 15), {"baseline": oks(10, 11, 12)},
     "pass", "check items on h1: pass: error_rate 0 <= 0; baseline.p95 15 <= 62 (reference 12, x1.2); baseline.error_rate 0 <= 0 (reference 0, +0)"),
    ("more errors than baseline fails", check(max_error_rate=1, baseline={"latency_ratio": None, "error_rate_delta": 0.1}),
     oks(10) + errs(1), {"baseline": oks(10, 10)},
     "fail", "check items on h1: fail: baseline.error_rate 0.5 > 0.1 (reference 0, +0.1) (1 of 2 samples bad: items: HTTP 500, expected 200)"),
    ("no baseline is inconclusive", check(baseline=True), oks(10, 10), {"baseline": None},
     "inconclusive", "check items on h1: inconclusive: no pre-patch baseline for this host"),
    ("no baseline without must_have_data skips", check(baseline=True, must_have_data=False), oks(10, 10), {"baseline": []},
     "pass", "check items on h1: pass: error_rate 0 <= 0; no pre-patch baseline for this host; must_have_data is false, comparison skipped"),
    ("slower than unpatched hosts fails", check(baseline={"control_hosts": 2}), oks(300, 300),
     {"baseline": oks(290, 300), "control": oks(10, 12), "control_hosts": ["h7", "h8"]},
     "fail", "check items on h1: fail: control.p95 300 > 62 (reference 12, x1.2)"),
]


@pytest.mark.parametrize(("spec", "samples", "extra", "status", "reason"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_evaluate(spec: dict[str, t.Any], samples: list[dict[str, t.Any]], extra: dict[str, t.Any], status: str, reason: str) -> None:
    result = evaluate(spec, "h1", samples, **extra)
    assert (result["status"], result["reason"]) == (status, reason)


def test_evaluate_reports_measured_values_next_to_thresholds() -> None:
    result = evaluate(check(baseline=True, latency_ms={"p95": 100}), "h1", oks(300, 310) + errs(1, 320), baseline=oks(10, 12))
    fired = {item["name"]: item for item in result["conditions"] if item["status"] == "fail"}
    assert fired["error_rate"] == {"condition": "error_rate <= 0", "name": "error_rate", "op": "<=", "measured": 0.3333, "threshold": 0,
                                   "status": "fail"}
    assert fired["latency_ms.p95"]["measured"] == 320.0 and fired["latency_ms.p95"]["threshold"] == 100
    assert fired["baseline.p95"] == {"condition": "baseline.p95 <= 62", "name": "baseline.p95", "op": "<=", "measured": 320.0,
                                     "threshold": 62.0, "status": "fail", "reference": 12.0, "ratio": 1.2, "min_delta_ms": 50}
    assert result["seen"] == ["items: HTTP 500, expected 200"]
    assert set(compact(result)) <= set(result)


METRIC_CASES: list[tuple[str, dict[str, t.Any], list[dict[str, t.Any]], str, str]] = [
    ("value within the condition", metric(), [sample("ok", 3, value=0.01)], "pass", "check errors: pass: error_rate 0 <= 0"),
    ("value breaks the condition", metric(), [sample("error", 3, 'errors{host="h1"}: value 0.5 > max 0.05', value=0.5)],
     "fail", 'check errors: fail: error_rate 1 > 0 (1 of 1 samples bad: errors{host="h1"}: value 0.5 > max 0.05)'),
    ("empty result is no data", metric(), [sample("nodata", 3, "query returned no data: q")] * 2,
     "inconclusive", "check errors: inconclusive: no data (2 samples, none measured)"),
    ("empty result may pass when data is optional", metric(must_have_data=False), [sample("nodata", 3, "query returned no data: q")],
     "pass", "check errors: pass: no data (1 samples, none measured); must_have_data is false"),
    ("server down is inconclusive", metric(), [sample("unavailable", None, "query http://p:9090: URLError: refused")] * 2,
     "inconclusive", "check errors: inconclusive: no measurement succeeded (2 of 2 unavailable) (2 of 2 samples bad: query http://p:9090: URLError: refused)"),
    ("server down too long fails", metric(samples=3, max_consecutive_errors=2), [sample("unavailable", None, "down")] * 3,
     "fail", "check errors: fail: consecutive_errors 3 > 2 (3 of 3 samples bad: down)"),
    ("some data is enough", metric(), [sample("nodata"), sample("ok", 2, value=0.0)], "pass", "check errors: pass: error_rate 0 <= 0"),
]


@pytest.mark.parametrize(("spec", "samples", "status", "reason"), [case[1:] for case in METRIC_CASES], ids=[case[0] for case in METRIC_CASES])
def test_evaluate_metric(spec: dict[str, t.Any], samples: list[dict[str, t.Any]], status: str, reason: str) -> None:
    result = evaluate(spec, FLEET, samples)
    assert (result["status"], result["reason"]) == (status, reason)


def test_combine_splits_host_failures_fleet_failures_and_inconclusive() -> None:
    results = [
        evaluate(check(), "h1", oks(1, 1)),
        evaluate(check(), "h2", errs(2)),
        evaluate(check(baseline=True), "h3", oks(1), baseline=None),
        evaluate(metric(), FLEET, [sample("error", 1, "q: value 1 > max 0.05", value=1.0)]),
        evaluate(metric(), FLEET, [sample("nodata")]),
    ]
    outcome = combine(results)
    assert outcome.status == "fail"
    assert outcome.host_failures == {"h2": results[1]["reason"]}
    assert outcome.fleet_failures == (results[3]["reason"],)
    assert outcome.inconclusive == (results[2]["reason"], results[4]["reason"])
    assert [(item["check"], item["host"], item["name"], item["result"]) for item in outcome.fired] == [
        ("items", "h2", "error_rate", "fail"),
        ("items", "h3", "baseline", "inconclusive"),
        ("errors", FLEET, "error_rate", "fail"),
        ("errors", FLEET, "measured_samples", "inconclusive"),
    ]
    assert outcome.as_dict()["fleet_failures"] == [results[3]["reason"]]


@pytest.mark.parametrize(
    ("results", "status"),
    [([], "pass"), ([evaluate(check(), "h1", oks(1))], "pass"), ([evaluate(check(), "h1", [])], "inconclusive")],
)
def test_combine_status(results: list[dict[str, t.Any]], status: str) -> None:
    assert combine(results).status == status


@pytest.mark.parametrize(
    ("exclude", "count", "expected"),
    [({"a", "b"}, 2, ["c", "d"]), ({"a"}, 0, []), ({"a", "b", "c", "d"}, 3, []), (set(), 10, ["a", "b", "c", "d"])],
)
def test_pick_control_hosts(exclude: set[str], count: int, expected: list[str]) -> None:
    assert pick_control_hosts(["a", "b", "c", "d"], exclude=exclude, count=count) == expected
