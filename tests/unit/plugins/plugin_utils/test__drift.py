from __future__ import annotations

import json
import typing as t

import pytest

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._drift import (
    DEFAULT_SLO_TARGETS,
    DriftError,
    Patch,
    Reconciler,
    VersionSpec,
    HostMark,
    apply_registry,
    fingerprint,
    fingerprint_start,
    format_time,
    host_record,
    parse_desired_state,
    parse_duration,
    parse_time,
    registry_marks,
    row_json,
    version_line,
    with_slo_targets,
)

NOW = "2026-03-10T00:00:00Z"
DESIRED: dict[str, t.Any] = {
    "promotion": ["dev", "staging", "prod"],
    "environments": {
        "dev": {"app": "1.1.0", "db": "2.0.0"},
        "staging": {"app": "1.0.1", "db": "2.0.0"},
        "prod": {"app": "1.0.0", "db": "2.0.0"},
    },
    "services": {"app": {"builds": {"1.0.0": "a" * 64, "1.0.1": "b" * 64, "1.0.2": None, "1.1.0": None, "0.9.0": None}}},
    "patches": [
        {"id": "CVE-1", "service": "app", "fixed_in": ["1.0.1", "1.1.0"], "severity": "critical",
         "released_at": "2026-03-01T00:00:00Z"},
    ],
}


def host(name: str, env: str, services: dict[str, t.Any] | None = None, **extra: t.Any) -> dict[str, t.Any]:
    record = {"host": name, "environment": env, "region": "eu", "tenant": "acme", "segment": "web",
              "collected_at": "2026-03-09T12:00:00Z", "state": "ok", "reason": None, "services": services or {}}
    record.update(extra)
    return record


def svc(version: str | None, *, sha: str | None = None, installed: str = "2026-03-02T00:00:00Z", state: str = "ok",
        reason: str | None = None) -> dict[str, t.Any]:
    return {"state": state, "reason": reason, "version": version, "artifact_sha256": sha, "installed_at": installed}


def build(records: list[dict[str, t.Any]], desired: dict[str, t.Any] | None = None, now: str = NOW):
    reconciler = Reconciler(parse_desired_state(desired or DESIRED), now=t.cast(float, parse_time(now)))
    reconciler.add_all(records)
    return reconciler.build()


def statuses(report) -> dict[tuple[str, str], tuple[str, str | None]]:
    return {(row["host"], row["service"]): (row["status"], row["reason"]) for row in report.row_dicts()}


# ------------------------------------------------------------------------------------------ small parsers


@pytest.mark.parametrize(("text", "seconds"), [
    ("7d", 7 * 86400.0), ("12h", 43200.0), ("1d12h", 129600.0), ("2w", 1209600.0), ("90m", 5400.0), ("30s", 30.0),
    (3600, 3600.0), (1.5, 1.5), ("1.5d", 129600.0),
])
def test_parse_duration(text: t.Any, seconds: float) -> None:
    assert parse_duration(text, where="x") == seconds


@pytest.mark.parametrize("text", ["7 days", "d7", "", "-1d", True, "1x"])
def test_parse_duration_refuses(text: t.Any) -> None:
    with pytest.raises(DriftError, match=r"^x: "):
        parse_duration(text, where="x")


@pytest.mark.parametrize(("text", "epoch"), [
    ("2026-03-01T00:00:00Z", 1772323200.0),
    ("2026-03-01T01:00:00+01:00", 1772323200.0),
    ("2026-03-01 00:00:00", 1772323200.0),
    ("2026-03-01", 1772323200.0),
    ("2026-03-01T00:00:00.123Z", 1772323200.0),
    ("yesterday", None),
    (None, None),
])
def test_parse_time(text: t.Any, epoch: float | None) -> None:
    assert parse_time(text) == epoch


def test_format_time_round_trips() -> None:
    assert format_time(parse_time("2026-03-01T10:11:12Z")) == "2026-03-01T10:11:12Z"


@pytest.mark.parametrize(("version", "depth", "line"), [
    ("1.4.2", 2, "1.4"), ("1.4.2", 1, "1"), ("1.4.2-rc1", 2, "1.4"), ("2.0.0+build7", 2, "2.0"), ("10", 2, "10"),
])
def test_version_line(version: str, depth: int, line: str) -> None:
    assert version_line(version, depth) == line


@pytest.mark.parametrize(("spec", "version", "matches"), [
    (">=1.0.1", "1.0.1", True), (">=1.0.1", "1.0.0", False), (">=1.0.1,<2", "1.9.9", True), (">=1.0.1,<2", "2.0.0", False),
    ("1.0.*", "1.0.7", True), ("1.0.*", "1.1.0", False), ("!=1.0.3", "1.0.3", False), ("1.2.10", "1.2.10", True),
    (">1.2.9", "1.2.10", True), ("<1.0.0", "1.0.0-rc1", True), ("==1.0", "1.0", True),
])
def test_version_spec(spec: str, version: str, matches: bool) -> None:
    assert VersionSpec.parse(spec, where="x").matches(version) is matches


@pytest.mark.parametrize(("spec", "message"), [
    (">=1.*", "x: a wildcard only goes with == or != ('>=1.*')"),
    ("", "x: '' is not a version range (e.g. '>=1.0.1,<2')"),
    (">= 1, <", "x: '<' is not a version clause (e.g. '>=1.0.1')"),
])
def test_version_spec_refuses(spec: str, message: str) -> None:
    with pytest.raises(DriftError) as exc:
        VersionSpec.parse(spec, where="x")
    assert str(exc.value) == message


# ------------------------------------------------------------------------------------------ backports


@pytest.mark.parametrize(("fixed_in", "version", "fixed"), [
    (("1.0.1", "1.1.3"), "1.0.1", True),
    (("1.0.1", "1.1.3"), "1.0.5", True),
    (("1.0.1", "1.1.3"), "1.0.0", False),
    (("1.0.1", "1.1.3"), "1.1.2", False),   # the line has its own fix, not yet reached
    (("1.0.1", "1.1.3"), "1.1.3", True),
    (("1.0.1", "1.2.3"), "1.1.9", False),   # a line in between without a fix
    (("1.0.1", "1.1.3"), "2.0.0", True),    # newer than every fix: forward-ported
    (("1.0.1",), "0.9.9", False),
])
def test_patch_fixed_across_version_lines(fixed_in: tuple[str, ...], version: str, fixed: bool) -> None:
    assert Patch(id="P", service="app", fixed_in=fixed_in).fixed(version, 2) is fixed


# ------------------------------------------------------------------------------------------ desired state


@pytest.mark.parametrize(("data", "message"), [
    ({"bogus": 1}, "d: unknown key(s) bogus (expected compatibility, environments, line_depth, patches, promotion, schema, services, slo)"),
    ({"promotion": ["dev", "dev"]}, "d: promotion lists an environment twice"),
    ({"environments": {"prod": {"app": {"version": "1.0", "sha": "x"}}}},
     "d: environments.prod.app: unknown key(s) sha (expected version, sha256)"),
    ({"environments": {"prod": {"app": None}}}, "d: environments.prod.app: None is not a version"),
    ({"environments": {"prod": {"app": {"version": "1", "sha256": "xyz"}}}}, "d: environments.prod.app.sha256 must be 64 hex digits"),
    ({"patches": [{"service": "app", "fixed_in": "1"}]}, "d: patches[0]: id is required"),
    ({"patches": [{"id": "P", "service": "app"}]}, "d: patches[0] (P): fixed_in (the version(s) that carry the fix) is required"),
    ({"patches": [{"id": "P", "service": "app", "fixed_in": "1", "released_at": "soon"}]},
     "d: patches[0] (P): released_at 'soon' is not an ISO 8601 time"),
    ({"patches": [{"id": "P", "service": "a", "fixed_in": "1"}, {"id": "P", "service": "a", "fixed_in": "2"}]},
     "d: patches[1]: patch P is listed twice"),
    ({"compatibility": [{"service": "web", "requires": {"service": "api"}}]},
     "d: compatibility[0]: needs service and requires.service with requires.versions"),
    ({"compatibility": [{"service": "web", "requires": {"service": "api", "versions": ">=1"}, "scope": "region"}]},
     "d: compatibility[0]: scope must be environment or host"),
    ({"slo": {"targets": {"critical": "soon"}}},
     "d: slo.targets.critical: 'soon' is not a duration (use e.g. 7d, 12h, 1d12h, 2w, 90m or seconds)"),
    ({"services": {"app": {"match": {"zone": "a"}}}}, "d: services.app.match: unknown key zone (expected region, tenant, segment)"),
    ({"line_depth": 9}, "d: line_depth must be an integer from 1 to 4"),
    ("not a mapping", "d must be a mapping, not str"),
])
def test_desired_state_errors_name_the_field(data: t.Any, message: str) -> None:
    with pytest.raises(DriftError) as exc:
        parse_desired_state(data, source="d")
    assert str(exc.value) == message


def test_desired_state_defaults_and_slo_override() -> None:
    desired = parse_desired_state({"environments": {"prod": {"app": "1.0.0"}}})
    assert desired.slo_targets == DEFAULT_SLO_TARGETS and desired.slo_target_source == "default"
    assert desired.desired("prod", "app").version == "1.0.0"
    overridden = with_slo_targets(desired, {"critical": "2d"}, source="policy")
    assert overridden.slo_targets == {"critical": 172800.0} and overridden.slo_target_source == "policy"


# ------------------------------------------------------------------------------------------ statuses


STATUS_CASES = [
    # (environment, service facts, status, reason)
    ("prod", {"app": svc("1.0.0", sha="a" * 64)}, "in_sync", None),
    ("staging", {"app": svc("1.0.1")}, "in_sync", None),
    ("staging", {"app": svc("1.1.0")}, "in_sync",
     "runs 1.1.0 on supported line 1.1: carries every fix of desired 1.0.1 (backport equivalent)"),
    ("staging", {"app": svc("1.0.0")}, "missing_patch", "runs 1.0.0, lacks CVE-1 that desired 1.0.1 carries"),
    ("dev", {"app": svc("1.0.0")}, "missing_patch", "runs 1.0.0, lacks CVE-1 that desired 1.1.0 carries"),
    ("dev", {"app": svc("1.0.1")}, "in_sync",
     "runs 1.0.1 on supported line 1.0: carries every fix of desired 1.1.0 (backport equivalent)"),
    ("prod", {"app": svc("1.0.1")}, "drifted", "runs 1.0.1, newer than desired 1.0.0"),
    ("staging", {"app": svc("1.0.2")}, "drifted", "runs 1.0.2, newer than desired 1.0.1"),
    ("prod", {"app": svc("0.9.0")}, "drifted", "runs 0.9.0 on unsupported line 0.9, desired 1.0.0"),
    ("prod", {"app": svc("1.0.0", sha="c" * 64)}, "unexpected_version",
     "app 1.0.0 was installed from artifact cccccccccccc..., not the published build aaaaaaaaaaaa..."),
    ("prod", {"app": svc("1.0.0-local")}, "unexpected_version",
     "app 1.0.0-local is not a known build (catalogue: 0.9.0, 1.0.0, 1.0.1, 1.0.2, 1.1.0)"),
    ("staging", {"app": svc("0.8.0")}, "unexpected_version",
     "app 0.8.0 is not a known build (catalogue: 0.9.0, 1.0.0, 1.0.1, 1.0.2, 1.1.0); lacks CVE-1"),
    ("prod", {"app": svc(None, state="corrupt", reason="/r/state/app.manifest.json is not valid JSON: Expecting value")},
     "unknown", "/r/state/app.manifest.json is not valid JSON: Expecting value"),
    ("prod", {"app": svc("1.0.0", state="inconsistent", reason="the current release is 1.0.1, the manifest records 1.0.0")},
     "unknown", "the current release is 1.0.1, the manifest records 1.0.0"),
    ("prod", {"app": svc(None, state="missing", reason="no host manifest at /r/state/app.manifest.json")},
     "unknown", "no host manifest at /r/state/app.manifest.json"),
    ("prod", {"app": svc(None)}, "unknown", "the host manifest of app names no version"),
    ("qa", {"app": svc("1.0.0")}, "unknown", "no desired state for app in environment qa"),
]


@pytest.mark.parametrize(("env", "services", "status", "reason"), STATUS_CASES)
def test_status_table(env: str, services: dict[str, t.Any], status: str, reason: str | None) -> None:
    report = build([host("h1", env, {"db": svc("2.0.0"), **services})])
    assert statuses(report)[("h1", "app")] == (status, reason)


@pytest.mark.parametrize(("record", "reason"), [
    (host("h1", "prod", state="unreachable", reason="unreachable: ssh: connect refused"), "unreachable: ssh: connect refused"),
    (host("h1", "prod", state="failed", reason="facts failed: root is empty"), "facts failed: root is empty"),
    (host("h1", "prod", state="no_data", reason=None), "no data (no_data)"),
    (host("h1", "prod", services=None), "facts record has no services"),
])
def test_hosts_without_data_are_unknown_for_every_desired_service_never_in_sync(record: dict[str, t.Any], reason: str) -> None:
    if record["services"] == {}:
        record["services"] = None
    report = build([record])
    assert statuses(report) == {("h1", "app"): ("unknown", reason), ("h1", "db"): ("unknown", reason)}
    assert report.totals["in_sync"] == 0


def test_a_desired_service_without_host_manifest_is_unknown() -> None:
    report = build([host("h1", "prod", {"db": svc("2.0.0")})])
    assert statuses(report)[("h1", "app")] == ("unknown", "no host manifest of app")


def test_service_match_limits_where_a_service_is_expected() -> None:
    desired = dict(DESIRED, services={"app": {"match": {"segment": ["api"]}}})
    report = build([host("h1", "prod", {"db": svc("2.0.0")})], desired)
    assert ("h1", "app") not in statuses(report)


# ------------------------------------------------------------------------------------------ merging


def test_latest_collection_of_a_host_wins_whatever_the_order() -> None:
    old = host("h1", "prod", {"app": svc("1.0.0"), "db": svc("2.0.0")}, collected_at="2026-03-08T00:00:00Z")
    new = host("h1", "prod", {"app": svc("1.0.1"), "db": svc("2.0.0")}, collected_at="2026-03-09T00:00:00Z")
    for order in ([old, new], [new, old]):
        report = build(order)
        assert statuses(report)[("h1", "app")][0] == "drifted"
        assert report.hosts == 1


def test_slices_merged_equal_the_unsliced_report() -> None:
    records = [host(f"h{i:02d}", ("dev", "staging", "prod")[i % 3],
                    {"app": svc(("1.0.0", "1.0.1", "1.1.0", "1.0.2")[i % 4]), "db": svc("2.0.0")}) for i in range(30)]
    records.append(host("h99", "prod", state="unreachable", reason="unreachable: x"))
    whole = build(records)
    names = sorted(r["host"] for r in records)
    slices = [[r for r in records if r["host"] in names[k::3]] for k in range(3)]
    merged = build([r for part in reversed(slices) for r in part])
    assert whole.document() == merged.document()
    assert list(whole.row_dicts()) == list(merged.row_dicts())
    assert fingerprint(whole.document(), whole.rows) == fingerprint(merged.document(), merged.rows)


def test_invalid_records_are_counted_not_fatal() -> None:
    reconciler = Reconciler(parse_desired_state(DESIRED), now=0)
    reconciler.add_all(["nope", {"no": "host"}, {"host": "h1", "services": {"app": "x"}, "environment": "prod"}])
    assert reconciler.rejected_count == 2
    assert statuses(reconciler.build())[("h1", "app")] == ("unknown", "service facts are not an object")


# ------------------------------------------------------------------------------------------ sections


def test_alignment_reports_mixed_versions_and_lines() -> None:
    report = build([host("a", "staging", {"app": svc("1.0.1"), "db": svc("2.0.0")}),
                    host("b", "staging", {"app": svc("1.1.0"), "db": svc("2.0.0")}),
                    host("c", "staging", {"app": svc("1.0.1"), "db": svc("2.0.0")})])
    app = next(entry for entry in report.alignment() if entry["service"] == "app")
    assert app["versions"] == {"1.0.1": 2, "1.1.0": 1}
    assert app["lines"] == {"1.0": 2, "1.1": 1}
    assert (app["mixed"], app["mixed_lines"]) == (True, True)


@pytest.mark.parametrize(("rule", "violations"), [
    ({"service": "app", "versions": ">=1.1", "requires": {"service": "db", "versions": ">=3"}},
     [("dev", ["1.1.0"], ["2.0.0"], 1)]),
    ({"service": "app", "requires": {"service": "db", "versions": ">=2"}}, []),
    ({"service": "app", "requires": {"service": "db", "versions": ">=3"}, "environments": ["prod"]},
     [("prod", ["1.0.0"], ["2.0.0"], 1)]),
    ({"service": "app", "versions": ">=1.1", "requires": {"service": "db", "versions": ">=3"}, "scope": "host"},
     [("dev", ["1.1.0"], ["2.0.0"], 1)]),
])
def test_compatibility_rules(rule: dict[str, t.Any], violations: list[tuple[t.Any, ...]]) -> None:
    desired = dict(DESIRED, compatibility=[rule])
    report = build([host("d", "dev", {"app": svc("1.1.0"), "db": svc("2.0.0")}),
                    host("p", "prod", {"app": svc("1.0.0"), "db": svc("2.0.0")})], desired)
    found = [(v["environment"], v["versions"], v["found"], v["hosts"]) for v in report.compatibility()]
    assert found == violations


def test_lag_names_the_patch_prod_lacks_and_since_when() -> None:
    report = build([
        host("d1", "dev", {"app": svc("1.1.0", installed="2026-03-02T00:00:00Z"), "db": svc("2.0.0")}),
        host("s1", "staging", {"app": svc("1.0.1", installed="2026-03-03T00:00:00Z"), "db": svc("2.0.0")}),
        host("s2", "staging", {"app": svc("1.0.1", installed="2026-03-05T00:00:00Z"), "db": svc("2.0.0")}),
        host("p1", "prod", {"app": svc("1.0.0"), "db": svc("2.0.0")}),
        host("p2", "prod", {"app": svc("1.0.1"), "db": svc("2.0.0")}),
    ])
    lag = report.lag()
    assert [(e["from"], e["to"], e["patch"]) for e in lag] == [("staging", "prod", "CVE-1")]
    entry = lag[0]
    assert (entry["from_patched"], entry["from_hosts"], entry["to_lacking"], entry["to_hosts"]) == (2, 2, 1, 2)
    assert entry["since"] == "2026-03-03T00:00:00Z" and entry["complete_since"] == "2026-03-05T00:00:00Z"
    assert entry["lag_seconds"] == 7 * 86400.0
    assert entry["promoted"] is False and entry["example_host"] == "p1"
    assert report.lag_summary(lag)[1] == {"from": "staging", "to": "prod", "patches": 1, "patch_ids": ["CVE-1"],
                                          "max_lag_seconds": 7 * 86400.0, "hosts_lacking": 1}


def test_backports_count_as_one_remediation_in_the_lag() -> None:
    # dev on the 1.1 line, staging on the 1.0 line: both carry CVE-1, nothing lags
    report = build([host("d1", "dev", {"app": svc("1.1.0"), "db": svc("2.0.0")}),
                    host("s1", "staging", {"app": svc("1.0.1"), "db": svc("2.0.0")})])
    assert report.lag() == []


def test_time_to_patch_per_severity() -> None:
    desired = dict(DESIRED, patches=[
        {"id": "CVE-1", "service": "app", "fixed_in": ["1.0.1", "1.1.0"], "severity": "critical", "released_at": "2026-03-01T00:00:00Z"},
        {"id": "OLD-1", "service": "db", "fixed_in": ["2.0.0"], "severity": "high", "released_at": "2026-01-01T00:00:00Z"},
    ], slo={"targets": {"critical": "7d", "high": "30d"}})
    report = build([
        host("a", "dev", {"app": svc("1.1.0", installed="2026-03-03T00:00:00Z"), "db": svc("2.0.0", installed="2026-01-05T00:00:00Z")}),
        host("b", "staging", {"app": svc("1.0.1", installed="2026-03-09T00:00:00Z"), "db": svc("1.9.0")}),
        host("e", "staging", {"app": svc("1.0.1", installed="2026-03-04T00:00:00Z"), "db": svc("2.0.0", installed="2026-01-02T00:00:00Z")}),
        host("c", "prod", {"app": svc("1.0.0"), "db": svc("2.0.0", installed="2026-02-20T00:00:00Z")}),
        host("d", "prod", state="unreachable", reason="unreachable: x"),
    ], desired, now="2026-03-05T00:00:00Z")
    slo = report.slo()
    critical, high = slo["severities"]
    # CVE-1: a and e in time, b after the 7-day deadline (late), c open (4 of 7 days used), d unknown
    assert (critical["within"], critical["late"], critical["open"], critical["overdue"], critical["unknown"]) == (2, 1, 1, 0, 1)
    assert critical["share_within_target"] == 0.6
    assert critical["target_used"] == round(4 / 7, 4)
    assert critical["oldest_overdue"] is None
    # OLD-1: a and e in time, c late (patched after 30 days), b overdue (63 days), d unknown
    assert (high["within"], high["late"], high["open"], high["overdue"], high["unknown"]) == (2, 1, 0, 1, 1)
    assert high["oldest_overdue"] == {"patch": "OLD-1", "service": "db", "released_at": "2026-01-01T00:00:00Z",
                                      "age_seconds": 63 * 86400.0, "overdue_seconds": 33 * 86400.0, "hosts": 1, "example_host": "b"}
    assert slo["target_source"] == "desired state"


def test_patch_without_severity_or_release_is_listed_as_skipped() -> None:
    desired = dict(DESIRED, patches=[{"id": "P", "service": "app", "fixed_in": ["1.0.1"]}])
    assert build([host("a", "prod", {"app": svc("1.0.0"), "db": svc("2.0.0")})], desired).slo()["skipped"] == [
        {"patch": "P", "reason": "no severity"}]


def test_matrix_cell_shows_the_worst_status() -> None:
    report = build([host("a", "staging", {"app": svc("1.0.1"), "db": svc("2.0.0")}),
                    host("b", "staging", {"app": svc("1.0.0"), "db": svc("2.0.0")})])
    cell = next(c for c in report.matrix() if c["service"] == "app")
    assert cell["status"] == "missing_patch" and cell["statuses"]["in_sync"] == 1 and cell["in_sync_share"] == 0.5


# ------------------------------------------------------------------------------------------ registry and records


def test_registry_completes_patches_and_desired_versions() -> None:
    desired = parse_desired_state({"environments": {"prod": {"app": "1.0.0"}},
                                   "patches": [{"id": "CVE-1", "service": "app", "fixed_in": ["1.0.1"]}]})
    views = [
        {"patch_id": "FP-7", "service": "app", "target_version": "1.0.1", "severity": "critical",
         "registered_at": "2026-03-01T00:00:00Z", "state": "rolled_out", "artifact": {"sha256": "b" * 64},
         "hosts": {"s1": {"outcome": "patched"}, "p1": {"outcome": "patched"}}},
        {"patch_id": "FP-8", "service": "app", "target_version": "1.2.0", "state": "halted", "hosts": {"s1": {"outcome": "patched"}}},
    ]
    completed, info = apply_registry(desired, views, {"s1": "staging", "p1": "prod"})
    cve = completed.patches[0]
    assert (cve.id, cve.severity, format_time(cve.released_at), cve.patch_ids) == ("CVE-1", "critical", "2026-03-01T00:00:00Z", ("FP-7",))
    assert [p.id for p in completed.patches] == ["CVE-1", "FP-8"]
    # the file's own prod entry wins; staging had none and takes the completed rollout's version
    assert completed.desired("prod", "app").version == "1.0.0"
    assert completed.desired("staging", "app") == completed.environments["staging"]["app"]
    assert (completed.desired("staging", "app").version, completed.desired("staging", "app").source) == ("1.0.1", "registry FP-7")
    assert info == {"patches": 2, "derived": ["staging/app=1.0.1 (registry FP-7)"]}


@pytest.mark.parametrize(("result", "state", "reason"), [
    (None, "no_data", "no facts from this host (not in the run, or it left the play)"),
    ({"unreachable": True, "msg": "ssh: refused"}, "unreachable", "unreachable: ssh: refused"),
    ({"failed": True, "msg": "root is empty"}, "failed", "facts failed: root is empty"),
    ({"failed": False, "failed_when_result": False, "msg": "boom"}, "failed", "facts failed: boom"),
    ({"skipped": True, "skip_reason": "Conditional result was False"}, "no_data", "facts were skipped: Conditional result was False"),
    ({"ansible_facts": {"fleetpatch_patch": {"collected_at": "2026-03-09T00:00:00Z", "services": {"app": {"version": "1"}}}}},
     "ok", None),
])
def test_host_record(result: dict[str, t.Any] | None, state: str, reason: str | None) -> None:
    record = host_record("h1", attrs={"environment": "prod", "region": "eu"}, result=result, collected_at="2026-03-10T00:00:00Z")
    assert (record["state"], record["reason"]) == (state, reason)
    assert record["environment"] == "prod" and record["region"] == "eu"
    if state == "ok":
        assert record["services"] == {"app": {"version": "1"}} and record["collected_at"] == "2026-03-09T00:00:00Z"


def test_row_json_is_the_row_dict() -> None:
    report = build([host('q"uote\\', "prod", {"app": svc("1.0.0", sha="a" * 64), "db": svc("2.0.0")})])
    for row, expected in zip(report.rows, report.row_dicts()):
        full, core = row_json(row)
        assert json.loads(full) == expected
        assert json.loads(core) == {key: value for key, value in expected.items() if key != "collected_at"}


# ------------------------------------------------------------------------------------------ hosts of one kind


def test_hosts_of_a_kind_seen_before_get_the_rows_they_get_alone() -> None:
    """The first host of a kind is read the general way, the next ones the short way: same rows either way."""
    kinds = [
        {"app": svc("1.0.0", sha="a" * 64), "db": svc("2.0.0")},
        {"app": svc("1.0.2")},
        {"app": svc("1.0.1", sha="b" * 64), "db": svc("2.0.0"), "cache": svc("4.0")},
        {"app": svc(None, state="corrupt", reason="bad"), "db": svc("2.0.0")},
        {"app": svc("1.0.0", installed="2026-03-02 10:00:00+01:00")},
    ]
    records = [host(f"h{index}-{copy}", "prod", kind) for copy in range(3) for index, kind in enumerate(kinds)]
    records += [host(f"u{copy}", "prod", state="unreachable", reason="unreachable: timeout") for copy in range(3)]
    together = build(records)
    for record in records:
        alone = build([record])
        assert [row for row in together.row_dicts() if row["host"] == record["host"]] == list(alone.row_dicts())


def test_only_the_first_host_of_a_kind_takes_the_general_way() -> None:
    """add_all's short ways (one, two, three services, no services, no data) take every later host of a kind: the general
    way (_add_record) runs once per kind, and a short way's host gets the rows the general way gives."""
    kinds = [
        {"app": svc("1.0.0"), "db": svc("2.0.0")},
        {"app": svc("1.0.2")},
        {"app": svc("1.0.1", sha="b" * 64), "db": svc("2.0.0"), "cache": svc("4.0")},
        {},
    ]
    records = [host(f"h{index}-{copy}", "prod", kind) for copy in range(4) for index, kind in enumerate(kinds)]
    records += [host(f"u{copy}", "prod", state="unreachable", reason="unreachable: timeout") for copy in range(4)]
    reconciler = Reconciler(parse_desired_state(DESIRED), now=t.cast(float, parse_time(NOW)))
    general = reconciler._add_record
    taken: list[str] = []

    def counted(record: t.Any, count: int) -> t.Any:
        taken.append(record["host"])
        return general(record, count)

    reconciler._add_record = counted  # type: ignore[method-assign]
    reconciler.add_all(records)
    assert taken == ["h0-0", "h1-0", "h2-0", "h3-0", "u0"]
    together = reconciler.build()
    for record in records:
        alone = build([record])
        assert [row for row in together.row_dicts() if row["host"] == record["host"]] == list(alone.row_dicts())


def test_merged_hosts_and_facts_read_later() -> None:
    reconciler = Reconciler(parse_desired_state(DESIRED), now=t.cast(float, parse_time(NOW)))
    reconciler.add_all([host("h1", "prod", {"app": svc("1.0.0"), "db": svc("2.0.0")}, collected_at="2026-03-08T00:00:00Z"),
                        host("h2", "prod", {"app": svc("1.0.0"), "db": svc("2.0.0")})])
    assert reconciler.host_count == 2 and reconciler.host_environments() == {"h1": "prod", "h2": "prod"}
    # read after the hosts were merged (host_count): a later collection still wins, an earlier one still loses
    reconciler.add_all([host("h1", "staging", {"app": svc("1.0.1"), "db": svc("2.0.0")}, collected_at="2026-03-09T00:00:00Z"),
                        host("h2", "dev", {"app": svc("1.1.0"), "db": svc("2.0.0")}, collected_at="2026-03-01T00:00:00Z")])
    report = reconciler.build()
    assert {row["host"]: (row["environment"], row["version"]) for row in report.row_dicts() if row["service"] == "app"} == {
        "h1": ("staging", "1.0.1"), "h2": ("prod", "1.0.0")}


def test_json_rows_are_the_row_dicts_and_the_fingerprint() -> None:
    records = [host(name, env, {"app": svc(version), "db": svc("2.0.0", installed=installed)}, collected_at=collected)
               for name, env, version, installed, collected in [
                   ("a", "prod", "1.0.0", "2026-03-02T00:00:00Z", "2026-03-09T12:00:00Z"),
                   ('q"uote', "dev", "1.1.0", None, None),
                   ("ü-host", "staging", "1.0.1", "2026-03-03T00:00:00Z", "2026-03-09T12:00:00Z")]]
    records.append(host("z", "prod", {"app": svc("1.0.0"), "db": svc("2.0.0"), "extra": svc("9")}))
    records.append(host("down", "prod", state="unreachable", reason="unreachable: ssh: connect to host down port 22: Connection refused"))
    report = build(records)
    document = report.document()
    pieces = list(report.json_rows(hosts=2))
    rows = json.loads("[" + "".join(text for _hosts, text, _fingerprint in pieces) + "]")
    assert rows == list(report.row_dicts())
    digest = fingerprint_start(document)
    for _hosts, _text, fingerprint_text in pieces:
        digest.update(fingerprint_text.encode("utf-8"))
    assert digest.hexdigest() == fingerprint(document, report.rows)


# --------------------------------------------------------------------------------------------- registry host marks


def _view(patch_id: str, target: str, hosts: dict[str, t.Any], *, affected: list[str] | None = None, service: str = "app") -> dict[str, t.Any]:
    return {"patch_id": patch_id, "service": service, "target_version": target, "state": "rolled_out",
            "affected_versions": affected if affected is not None else ["1.0.0"], "hosts": hosts}


def _outcome(outcome: str, at: str, **extra: t.Any) -> dict[str, t.Any]:
    return {"outcome": outcome, "at": at, **extra}


def test_registry_marks_take_the_latest_outcome_of_a_service_across_patches() -> None:
    views = [
        _view("FP-1", "1.0.1", {"q1": _outcome("quarantined", "2026-03-02T00:00:00.000000Z", reason="health check failed"),
                                "later": _outcome("failed", "2026-03-02T00:00:00.000000Z", reason="boom"),
                                "rb": _outcome("rollback_failed", "2026-03-03T00:00:00.000000Z", reason="restart failed"),
                                "na": _outcome("not_applicable", "2026-03-02T00:00:00.000000Z", version="0.9.0"),
                                "ok": _outcome("patched", "2026-03-02T00:00:00.000000Z")}),
        # a later rollout patched "later": its failure in FP-1 no longer counts
        _view("FP-2", "1.0.2", {"later": _outcome("patched", "2026-03-04T00:00:00.000000Z")}),
        _view("FP-3", "2.0.1", {"q1": _outcome("patched", "2026-03-05T00:00:00.000000Z")}, service="db"),
    ]
    marks, counts = registry_marks(views)
    assert sorted(marks) == ["na", "q1", "rb"]
    assert marks["q1"] == (HostMark("app", "quarantined", "quarantined by the rollout of FP-1 at 2026-03-02T00:00:00.000000Z: health check failed"),)
    assert marks["rb"][0].status == "unhealthy"
    assert marks["rb"][0].reason == "rollback failed in the rollout of FP-1 at 2026-03-03T00:00:00.000000Z: restart failed"
    assert marks["na"] == (HostMark("app", None, None, (("1.0.1", ("1.0.0",), "0.9.0", "FP-1"),)),)
    assert counts == {"quarantined": 1, "unhealthy": 1, "not_applicable": 1}
    # malformed views and rows are skipped, not fatal
    assert registry_marks([{"patch_id": "X"}, {"patch_id": "Y", "service": "app", "hosts": {"h": "patched"}}]) == (
        {}, {"quarantined": 0, "unhealthy": 0, "not_applicable": 0})


def _marked_report(records: list[dict[str, t.Any]], views: list[dict[str, t.Any]]):
    reconciler = Reconciler(parse_desired_state(DESIRED), now=t.cast(float, parse_time(NOW)))
    reconciler.add_all(records)
    marks, _counts = registry_marks(views)
    reconciler.use_registry_marks(marks)
    return reconciler.build()


def test_quarantined_and_unhealthy_hosts_are_never_in_sync_and_the_shape_cache_stays_right() -> None:
    # q1, u1 and ok1 are of one shape (same facts but name and times): only the hosts the registry marks change
    records = [host(name, "staging", {"app": svc("1.0.1", sha="b" * 64)}) for name in ("ok1", "q1", "u1")]
    records.append(host("gone", "staging", state="unreachable", reason="unreachable: ssh refused"))
    views = [_view("FP-1", "1.0.1", {"q1": _outcome("quarantined", "2026-03-02T00:00:00.000000Z", reason="health check failed"),
                                     "u1": _outcome("rolled_back", "2026-03-02T00:00:00.000000Z", reason="wave rolled back"),
                                     "gone": _outcome("quarantined", "2026-03-02T00:00:00.000000Z"),
                                     "ok1": _outcome("patched", "2026-03-02T00:00:00.000000Z")})]
    report = _marked_report(records, views)
    rows = {(row["host"], row["service"]): row for row in report.row_dicts()}
    assert rows[("ok1", "app")]["status"] == "in_sync"
    assert rows[("q1", "app")]["status"] == "quarantined"
    assert rows[("q1", "app")]["reason"] == ("quarantined by the rollout of FP-1 at 2026-03-02T00:00:00.000000Z: health check failed; "
                                             "its facts say in_sync: runs 1.0.1, desired 1.0.1")
    assert (rows[("u1", "app")]["status"], rows[("u1", "app")]["version"]) == ("unhealthy", "1.0.1")
    assert rows[("u1", "app")]["reason"].startswith("rolled back in the rollout of FP-1 at 2026-03-02T00:00:00.000000Z: wave rolled back; ")
    # no data now, quarantined by the last rollout: quarantined (the facts' unknown stays in the reason)
    assert rows[("gone", "app")]["status"] == "quarantined"
    assert rows[("gone", "app")]["reason"].endswith("its facts say unknown: unreachable: ssh refused")
    # db is not marked: its rows keep what the facts say
    assert {rows[(name, "db")]["status"] for name in ("q1", "u1", "ok1")} == {"unknown"}
    assert report.totals["in_sync"] == 1 and report.totals["quarantined"] == 2 and report.totals["unhealthy"] == 1
    assert report.drift_found
    document = report.document()
    assert document["summary"]["drift"] == 3
    # every row is in the JSON text the writers stream, with the same statuses as the row dicts
    text = "[" + "".join(part for _hosts, part, _fp in report.json_rows()) + "]"
    assert [(row["host"], row["status"]) for row in json.loads(text)] == [(row["host"], row["status"]) for row in report.row_dicts()]
    # a report without marks from the same reconciler state is the plain one
    assert {row["host"]: row["status"] for row in build(records).row_dicts() if row["service"] == "app"} == {
        "gone": "unknown", "ok1": "in_sync", "q1": "in_sync", "u1": "in_sync"}


def test_not_applicable_replaces_drift_only_for_the_patch_of_the_desired_version_while_it_still_holds() -> None:
    records = [
        host("s1", "staging", {"app": svc("0.9.0")}),   # recorded not applicable at 0.9.0 by FP-1 (desired 1.0.1)
        host("s2", "staging", {"app": svc("0.9.0")}),   # same version, not in the rollout: still missing the patch
        host("s3", "staging", {"app": svc("1.0.0", sha="a" * 64)}),  # was not applicable, now runs an affected version
        host("p1", "prod", {"app": svc("0.9.0")}),      # prod wants 1.0.0: FP-1 is not the patch of its desired version
    ]
    views = [_view("FP-1", "1.0.1", {"s1": _outcome("not_applicable", "2026-03-02T00:00:00.000000Z", version="0.9.0"),
                                     "s3": _outcome("not_applicable", "2026-03-02T00:00:00.000000Z", version="0.9.0"),
                                     "p1": _outcome("not_applicable", "2026-03-02T00:00:00.000000Z", version="0.9.0")})]
    report = _marked_report(records, views)
    app = {row["host"]: row for row in report.row_dicts() if row["service"] == "app"}
    expected = {"s1": "not_applicable", "s2": "missing_patch", "s3": "missing_patch", "p1": "drifted"}
    assert {name: row["status"] for name, row in app.items()} == expected
    assert app["s1"]["reason"] == "runs 0.9.0, and FP-1, which installs desired 1.0.1, applies only to 1.0.0"
    assert app["s1"]["version"] == "0.9.0" and app["s1"]["missing_patches"] == ["CVE-1"]
    assert not report.totals["drifted"] - 1 and report.totals["not_applicable"] == 1
    # time to patch and lag: the host the patch does not apply to lacks nothing
    slo = {entry["patch"]: entry for entry in report.slo()["patches"]}
    assert slo["CVE-1"]["open"] + slo["CVE-1"]["overdue"] == 3  # s2, s3 and p1 (prod runs 0.9.0 < the fix)
    alignment = {(a["environment"], a["service"]): a for a in report.alignment()}
    assert alignment[("staging", "app")]["versions"] == {"0.9.0": 2, "1.0.0": 1} and alignment[("staging", "app")]["not_applicable"] == 1


def test_not_applicable_without_affected_versions_holds_while_the_recorded_version_runs() -> None:
    records = [host("s1", "staging", {"app": svc("0.9.0")}), host("s2", "staging", {"app": svc("1.0.0", sha="a" * 64)})]
    views = [_view("FP-1", "1.0.1", {name: _outcome("not_applicable", "2026-03-02T00:00:00.000000Z", version="0.9.0")
                                     for name in ("s1", "s2")}, affected=[])]
    statuses = {row["host"]: row["status"] for row in _marked_report(records, views).row_dicts() if row["service"] == "app"}
    assert statuses == {"s1": "not_applicable", "s2": "missing_patch"}


def test_marks_do_not_depend_on_the_order_hosts_come_in() -> None:
    records = [host(f"h{index}", "staging", {"app": svc("0.9.0" if index % 2 else "1.0.1", sha=None if index % 2 else "b" * 64)})
               for index in range(10)]
    views = [_view("FP-1", "1.0.1", {"h1": _outcome("not_applicable", "2026-03-02T00:00:00.000000Z", version="0.9.0"),
                                     "h2": _outcome("quarantined", "2026-03-02T00:00:00.000000Z")})]
    one, two = _marked_report(records, views), _marked_report(list(reversed(records)), views)
    assert list(one.row_dicts()) == list(two.row_dicts())
    doc_one, doc_two = one.document(), two.document()
    assert fingerprint(doc_one, one.rows) == fingerprint(doc_two, two.rows)
    assert doc_one["summary"]["statuses"]["not_applicable"] == 1 and doc_one["summary"]["statuses"]["quarantined"] == 1


def test_results_are_named_and_still_unpack() -> None:
    views = [_view("FP-1", "1.0.1", {"na": _outcome("not_applicable", "2026-03-02T00:00:00.000000Z", version="0.9.0")})]
    result = registry_marks(views)
    marks, counts = result
    assert (result.marks, result.counts) == (marks, counts) and counts["not_applicable"] == 1
    entry = marks["na"][0].not_applicable[0]
    assert (entry.target, entry.affected, entry.recorded, entry.patch_id) == ("1.0.1", ("1.0.0",), "0.9.0", "FP-1")
    applied = apply_registry(parse_desired_state(DESIRED), views, {"na": "prod"})
    assert any("FP-1" in patch.patch_ids for patch in applied.desired.patches) and applied.info["patches"] == 1
    desired = parse_desired_state(dict(DESIRED, slo={"targets": {"critical": "1d"}, "environments": ["prod"]}), source="d.yml")
    assert (desired.slo_targets, desired.slo_target_source, desired.slo_environments) == ({"critical": 86400.0}, "d.yml", ("prod",))
