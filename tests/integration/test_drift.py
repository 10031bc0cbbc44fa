"""Drift reconciliation on the embedded demo fleet after partial rollouts, with faults: statuses, read-only runs,
merged slices, and the HTML page in a real headless browser."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import tempfile
import typing as t
import xml.etree.ElementTree as ET

import pytest
import yaml

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store_sql import DSN_VAR, PostgresStore

from .rollout_harness import DemoFleet, RunResult, run_playbook, tree_snapshot

pytestmark = pytest.mark.integration

NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
NOW_TEXT = NOW.strftime("%Y-%m-%dT%H:%M:%SZ")
UNREACHABLE = "us-east-acme-web-prod-01"
CORRUPT = "us-east-acme-web-dev-01"
TAMPERED = "eu-west-acme-api-prod-01"
AHEAD = "eu-west-acme-web-prod-01"
BACKPORT = "eu-west-acme-api-dev-01"
FAST = {"canary": {"size": 1}, "waves": ["100%"], "max_concurrency": 10, "error_budget": 2}
EXPECTED = {
    # dev wants 1.0.1; one host runs 1.1.0, the same fix on the next version line
    "eu-west-acme-web-dev-01": "in_sync",
    BACKPORT: "in_sync",
    "us-east-acme-api-dev-01": "in_sync",
    CORRUPT: "unknown",
    # staging wants 1.0.1; only eu-west got it
    "eu-west-acme-web-staging-01": "in_sync",
    "eu-west-acme-api-staging-01": "in_sync",
    "us-east-acme-web-staging-01": "missing_patch",
    "us-east-acme-api-staging-01": "missing_patch",
    # prod wants 1.0.0; one host got 1.0.1 ahead of promotion, one runs a rebuilt 1.0.0, one is unreachable
    AHEAD: "drifted",
    TAMPERED: "unexpected_version",
    UNREACHABLE: "unknown",
    "us-east-acme-api-prod-01": "in_sync",
}


def iso(delta: dt.timedelta) -> str:
    return (NOW + delta).strftime("%Y-%m-%dT%H:%M:%SZ")


class DriftFleet:
    def __init__(self, fleet: DemoFleet, base: str) -> None:
        self.fleet = fleet
        self.base = base
        self.desired_path = os.path.join(base, "desired-state.yml")

    def reconcile(self, report_dir: str, *, cmdline: str | None = None, **extra: t.Any) -> RunResult:
        extravars = {"reconcile_desired_state": self.desired_path, "reconcile_state_dir": self.fleet.state_dir,
                     "reconcile_report_dir": report_dir, "reconcile_now": NOW_TEXT}
        extravars.update(extra)
        return run_playbook("reconcile.yml", inventory=self.fleet.inventory, extravars=extravars, cmdline=cmdline)

    def report(self, report_dir: str) -> dict[str, t.Any]:
        with open(os.path.join(report_dir, "drift-report.json"), encoding="utf-8") as handle:
            return json.load(handle)

    def host_roots(self) -> list[str]:
        return [self.fleet.host_root(host) for host in self.fleet.nodes()]


@pytest.fixture(scope="module")
def drift_fleet():
    base = tempfile.mkdtemp(prefix="fleetpatch-drift-")
    fleet = DemoFleet(base, demo_fleet_environments=["dev", "staging", "prod"], demo_fleet_hosts_per_cell=1,
                      demo_fleet_tenants=["acme"], demo_fleet_faults=[{"kind": "unreachable", "match": {"host": UNREACHABLE}}])
    try:
        fleet.create()
        # partial rollouts: 1.0.1 to dev, to eu-west staging and (ahead of promotion) to one prod host; 1.1.0 to one dev host
        first = fleet.rollout(policy=FAST, rollout_targets=f"environment_dev:environment_staging:{AHEAD}:!us-east-acme-*-staging-*")
        assert first.status == "successful", first.stdout[-3000:]
        second = fleet.rollout(policy=FAST, version="1.1.0", rollout_targets=BACKPORT)
        assert second.status == "successful", second.stdout[-3000:]
        # a host manifest corrupted on disk, and a prod host whose 1.0.0 was installed from another build
        with open(os.path.join(fleet.host_root(CORRUPT), "state", "myapp.manifest.json"), "w", encoding="utf-8") as handle:
            handle.write('{"service": "myapp", "version": ')
        tampered = os.path.join(fleet.host_root(TAMPERED), "state", "myapp.manifest.json")
        with open(tampered, encoding="utf-8") as handle:
            manifest = json.load(handle)
        manifest["artifact_sha256"] = "0" * 64
        with open(tampered, "w", encoding="utf-8") as handle:
            json.dump(manifest, handle)
        artifacts = fleet.fleet()["artifacts"]
        desired = {
            "promotion": ["dev", "staging", "prod"],
            "environments": {"dev": {"myapp": "1.0.1"}, "staging": {"myapp": "1.0.1"}, "prod": {"myapp": "1.0.0"}},
            "services": {"myapp": {"builds": {version: {"sha256": entry["sha256"]} for version, entry in artifacts.items()}}},
            "patches": [
                {"id": "CVE-DEMO-1", "service": "myapp", "fixed_in": ["1.0.1", "1.1.0"], "severity": "critical",
                 "released_at": iso(-dt.timedelta(days=2)), "patch_ids": ["FP-DEMO-myapp-1.0.1", "FP-DEMO-myapp-1.1.0"]},
                {"id": "OLD-DEMO-2", "service": "myapp", "fixed_in": ["1.0.1"], "severity": "high",
                 "released_at": iso(-dt.timedelta(days=60))},
            ],
            "slo": {"targets": {"critical": "7d", "high": "30d"}},
        }
        drift = DriftFleet(fleet, base)
        with open(drift.desired_path, "w", encoding="utf-8") as handle:
            yaml.safe_dump(desired, handle)
        yield drift
    finally:
        fleet.teardown()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def full_run(drift_fleet: DriftFleet):
    """One normal reconcile run, facts saved for the merge test."""
    before = tree_snapshot(*drift_fleet.host_roots())
    report_dir = os.path.join(drift_fleet.base, "report-full")
    result = drift_fleet.reconcile(report_dir, reconcile_save_facts=os.path.join(drift_fleet.base, "facts", "unsliced.jsonl"))
    return result, report_dir, before


def report_result(result: RunResult) -> dict[str, t.Any]:
    """The drift_report task's result: it runs once, on localhost or delegated there from the first gathered host."""
    found = result.task_results("drift_report")
    assert len(found) == 1, found
    return next(iter(found.values()))


def changed_tasks(result: RunResult) -> list[str]:
    return [f"{e['event_data'].get('host')}: {e['event_data'].get('task')}" for e in result.events
            if e.get("event") == "runner_on_ok" and e["event_data"].get("res", {}).get("changed")]


def worded_alike(row: dict[str, t.Any]) -> dict[str, t.Any]:
    """The row with an unreachable host's reason cut to "unreachable": ansible-core words one refused ssh connection
    two ways, as a race goes (with ssh's message or without); the report's fingerprint leaves the wording out too."""
    reason = row.get("reason")
    return dict(row, reason="unreachable") if isinstance(reason, str) and reason.startswith("unreachable: ") else row


def row_differences(first: dict[str, t.Any], second: dict[str, t.Any]) -> dict[str, t.Any]:
    """The row fields two reports disagree on, per host and service (collected_at and the wording of unreachable aside):
    a failing comparison names the field instead of printing two 12-row reports cut short."""
    def rows(report: dict[str, t.Any]) -> dict[tuple[str, str], dict[str, t.Any]]:
        return {(row["host"], row["service"]): worded_alike(row) for row in report["rows"]}
    one, two = rows(first), rows(second)
    found: dict[str, t.Any] = {}
    for key in sorted(set(one) | set(two)):
        left, right = one.get(key, {}), two.get(key, {})
        fields = {name: (left.get(name), right.get(name)) for name in sorted(set(left) | set(right))
                  if name != "collected_at" and left.get(name) != right.get(name)}
        if fields:
            found["/".join(key)] = fields
    return found


def stable(report: dict[str, t.Any]) -> dict[str, t.Any]:
    data = {key: value for key, value in report.items() if key not in ("generated_at", "inputs")}
    data["rows"] = [{key: value for key, value in worded_alike(row).items() if key != "collected_at"} for row in report["rows"]]
    return data


def test_each_status_appears_where_it_should(drift_fleet: DriftFleet, full_run) -> None:
    result, report_dir, before = full_run
    assert result.status == "successful", result.stdout[-3000:]
    report = drift_fleet.report(report_dir)
    rows = {row["host"]: row for row in report["rows"]}
    assert {host: row["status"] for host, row in rows.items()} == EXPECTED
    assert report["summary"]["statuses"] == {"in_sync": 6, "drifted": 1, "missing_patch": 2, "unexpected_version": 1, "unknown": 2,
                                             "not_applicable": 0, "quarantined": 0, "unhealthy": 0}
    # unknown comes with its reason, never as in sync
    assert rows[UNREACHABLE]["reason"].startswith("unreachable: ") and rows[UNREACHABLE]["version"] is None
    assert "myapp.manifest.json is not valid JSON" in rows[CORRUPT]["reason"]
    assert rows[BACKPORT]["version"] == "1.1.0" and rows[BACKPORT]["equivalent_to"] == "1.0.1"
    assert rows["us-east-acme-web-staging-01"]["missing_patches"] == ["CVE-DEMO-1", "OLD-DEMO-2"]
    assert rows[AHEAD]["reason"] == "runs 1.0.1, newer than desired 1.0.0"
    assert "not the published build" in rows[TAMPERED]["reason"]
    # alignment, lag (backports count once) and time to patch
    prod = next(a for a in report["alignment"] if a["environment"] == "prod")
    assert prod["mixed"] is True and prod["versions"] == {"1.0.0": 2, "1.0.1": 1}
    lag = {(e["from"], e["to"], e["patch"]): e for e in report["lag"]}
    assert set(lag) == {("dev", "staging", "CVE-DEMO-1"), ("dev", "staging", "OLD-DEMO-2"),
                        ("staging", "prod", "CVE-DEMO-1"), ("staging", "prod", "OLD-DEMO-2")}
    assert (lag[("dev", "staging", "CVE-DEMO-1")]["from_patched"], lag[("dev", "staging", "CVE-DEMO-1")]["to_lacking"]) == (3, 2)
    assert lag[("staging", "prod", "CVE-DEMO-1")]["promoted"] is False and lag[("dev", "staging", "CVE-DEMO-1")]["promoted"] is True
    slo = {s["severity"]: s for s in report["slo"]["severities"]}
    assert (slo["critical"]["overdue"], slo["critical"]["open"], slo["critical"]["unknown"]) == (0, 4, 2)
    # OLD-DEMO-2 came out 60 days ago with a 30-day target: the 6 hosts patched today are late, the 4 others overdue
    assert (slo["high"]["late"], slo["high"]["overdue"], slo["high"]["within"]) == (6, 4, 0)
    assert slo["high"]["oldest_overdue"]["patch"] == "OLD-DEMO-2"
    # every format was written; JUnit has one test case per host and service
    for name in ("drift-report.html", "drift-report.md", "fleetpatch_drift.prom"):
        assert os.path.getsize(os.path.join(report_dir, name)) > 0
    junit = ET.parse(os.path.join(report_dir, "drift-junit.xml")).getroot()
    assert len(list(junit.iter("testcase"))) == 12 and (junit.get("failures"), junit.get("errors")) == ("4", "2")
    # read only: no task changed anything, no host tree changed
    assert changed_tasks(result) == []
    assert tree_snapshot(*drift_fleet.host_roots()) == before
    registry = report["inputs"]["registry"]
    if os.path.exists(os.path.join(drift_fleet.fleet.state_dir, "registry.sqlite3")) and registry["reason"] != "this collection has no patch registry support":
        assert registry["used"] is True and registry["patches"] >= 2


def test_check_mode_changes_nothing_and_writes_nothing(drift_fleet: DriftFleet, full_run) -> None:
    _result, report_dir, _before = full_run
    before = tree_snapshot(*drift_fleet.host_roots())
    check_dir = os.path.join(drift_fleet.base, "report-check")
    result = drift_fleet.reconcile(check_dir, cmdline="--check")
    assert result.status == "successful", result.stdout[-3000:]
    assert changed_tasks(result) == []
    assert not os.path.exists(check_dir)
    assert tree_snapshot(*drift_fleet.host_roots()) == before
    reported = report_result(result)
    assert reported["written"] is False
    full = drift_fleet.report(report_dir)
    # the sample carries some of a row's fields: those must agree with the written report's row
    rows = {(row["host"], row["service"]): row for row in full["rows"]}
    sample = [{name: rows[(row["host"], row["service"])].get(name) for name in row} for row in reported["drift_sample"]]
    assert row_differences({"rows": reported["drift_sample"]}, {"rows": sample}) == {}
    assert reported["fingerprint"] == full["fingerprint"]


def test_merged_slices_equal_the_unsliced_report(drift_fleet: DriftFleet, full_run) -> None:
    _result, report_dir, _before = full_run
    hosts = drift_fleet.fleet.nodes()  # sorted by name
    facts_dir = os.path.join(drift_fleet.base, "facts")
    for index in range(3):
        part = hosts[index::3]
        result = drift_fleet.reconcile(os.path.join(drift_fleet.base, f"unused-{index}"), cmdline=f"--limit {','.join(part)},localhost",
                                       reconcile_report=False, reconcile_save_facts=os.path.join(facts_dir, f"slice-{index}.jsonl"))
        assert result.status == "successful", result.stdout[-3000:]
        with open(os.path.join(facts_dir, f"slice-{index}.jsonl"), encoding="utf-8") as handle:
            assert sorted(json.loads(line)["host"] for line in list(handle)[1:]) == part
    merged_dir = os.path.join(drift_fleet.base, "report-merged")
    merged = drift_fleet.reconcile(merged_dir, reconcile_gather=False, reconcile_facts_files=[os.path.join(facts_dir, "slice-*.jsonl")])
    assert merged.status == "successful", merged.stdout[-3000:]
    merged_report, unsliced = drift_fleet.report(merged_dir), drift_fleet.report(report_dir)
    assert [info["records"] for info in merged_report["inputs"]["facts_files"]] == [4, 4, 4]
    assert row_differences(merged_report, unsliced) == {}
    assert stable(merged_report) == stable(unsliced)
    assert merged_report["fingerprint"] == unsliced["fingerprint"]


def test_fail_on_drift_fails_after_writing_the_report(drift_fleet: DriftFleet, full_run) -> None:
    facts = os.path.join(drift_fleet.base, "facts", "unsliced.jsonl")
    report_dir = os.path.join(drift_fleet.base, "report-gate")
    result = drift_fleet.reconcile(report_dir, reconcile_gather=False, reconcile_facts_files=[facts], reconcile_fail_on_drift=True)
    assert result.status == "failed"
    failed = report_result(result)
    assert failed["msg"].startswith("drift found: 1 drifted, 2 missing_patch, 1 unexpected_version")
    assert os.path.exists(os.path.join(report_dir, "drift-junit.xml"))


def test_html_report_renders_in_headless_chromium(drift_fleet: DriftFleet, full_run) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (bin/test installs it as root): the HTML report was not rendered in a browser")
    _result, report_dir, _before = full_run
    page = os.path.join(report_dir, "drift-report.html")
    profile = tempfile.mkdtemp(prefix="fleetpatch-chromium-")
    screenshot = os.path.join(profile, "report.png")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}"]
    try:
        dom = subprocess.run([*flags, "--dump-dom", f"file://{page}"], capture_output=True, text=True, timeout=120, check=True).stdout
        subprocess.run([*flags, "--window-size=1280,2000", f"--screenshot={screenshot}", f"file://{page}"], capture_output=True,
                       timeout=120, check=True)
        with open(screenshot, "rb") as handle:
            png = handle.read()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    # the browser parsed the page into the matrix, the drift list, lag and time-to-patch tables
    assert '<table class="matrix">' in dom
    for status in ("unknown", "missing_patch", "unexpected_version"):  # the worst status of dev, staging, prod
        assert f'data-status="{status}"' in dom
    assert UNREACHABLE in dom and "CVE-DEMO-1" in dom and "Time to patch" in dom
    assert png.startswith(b"\x89PNG") and len(png) > 20000


NA_HOST = "eu-west-acme-api-prod-01"
OK_HOST = "eu-west-acme-api-prod-02"
QUARANTINED = "eu-west-acme-api-prod-03"


def test_registry_not_applicable_and_quarantined_hosts_in_the_report(tmp_path) -> None:
    """A rollout whose manifest's affected_versions leave one host out (not_applicable) and that quarantines another
    (installed, then unhealthy), then reconcile: neither is drifted nor in sync, in every output."""
    fleet = DemoFleet(str(tmp_path), demo_fleet_environments=["prod"], demo_fleet_regions=["eu-west"], demo_fleet_tenants=["acme"],
                      demo_fleet_segments=["api"], demo_fleet_hosts_per_cell=3,
                      demo_fleet_faults=[{"kind": "unhealthy_after", "version": "1.0.1", "match": {"host": QUARANTINED}}])
    try:
        fleet.create()
        assert sorted(fleet.nodes()) == [NA_HOST, OK_HOST, QUARANTINED]
        first = fleet.rollout(policy=FAST, version="1.1.0", rollout_targets=NA_HOST)
        assert first.status == "successful", first.stdout[-3000:]
        # the 1.0.1 patch applies only to 1.0.0: NA_HOST (1.1.0 now) is left alone
        with open(fleet.manifest("1.0.1"), encoding="utf-8") as handle:
            manifest = yaml.safe_load(handle)
        manifest.update(patch_id="FP-DRIFT-NA", affected_versions=["1.0.0"])
        manifest_path = os.path.join(str(tmp_path), "FP-DRIFT-NA.yml")
        with open(manifest_path, "w", encoding="utf-8") as handle:
            yaml.safe_dump(manifest, handle)
        second = fleet.rollout(policy={"canary": {"size": 1}, "waves": ["100%"], "max_concurrency": 10, "error_budget": 1,
                                       "response": "quarantine"}, rollout_patch_manifest=manifest_path)
        assert second.status == "successful", second.stdout[-3000:]
        summary = fleet.summary("FP-DRIFT-NA")
        assert summary["not_applicable"] == {NA_HOST: "1.1.0"}
        assert summary["hosts"][QUARANTINED]["outcome"] == "quarantined"
        assert fleet.versions() == {NA_HOST: "1.1.0", OK_HOST: "1.0.1", QUARANTINED: "1.0.1"}

        desired = {"promotion": ["prod"], "environments": {"prod": {"myapp": "1.0.1"}},
                   "services": {"myapp": {"supported_lines": ["1.0"]}}}
        drift = DriftFleet(fleet, str(tmp_path))
        with open(drift.desired_path, "w", encoding="utf-8") as handle:
            yaml.safe_dump(desired, handle)
        before = tree_snapshot(*drift.host_roots())
        report_dir = os.path.join(str(tmp_path), "report")
        result = drift.reconcile(report_dir, reconcile_fail_on_drift=True, reconcile_fail_statuses=["drifted", "missing_patch"])
        assert result.status == "successful", result.stdout[-3000:]  # not_applicable and quarantined are not drifted
        assert changed_tasks(result) == [] and tree_snapshot(*drift.host_roots()) == before
        report = drift.report(report_dir)
        rows = {row["host"]: row for row in report["rows"]}
        assert {host: (row["status"], row["version"], row["desired"]) for host, row in rows.items()} == {
            NA_HOST: ("not_applicable", "1.1.0", "1.0.1"), OK_HOST: ("in_sync", "1.0.1", "1.0.1"),
            QUARANTINED: ("quarantined", "1.0.1", "1.0.1")}
        assert rows[NA_HOST]["reason"] == "runs 1.1.0, and FP-DRIFT-NA, which installs desired 1.0.1, applies only to 1.0.0"
        assert rows[QUARANTINED]["reason"].startswith("quarantined by the rollout of FP-DRIFT-NA at ")
        assert rows[QUARANTINED]["reason"].endswith("; its facts say in_sync: runs 1.0.1, desired 1.0.1")
        statuses = report["summary"]["statuses"]
        assert (statuses["in_sync"], statuses["not_applicable"], statuses["quarantined"], statuses["drifted"]) == (1, 1, 1, 0)
        assert report["inputs"]["registry"]["used"] is True
        assert report["inputs"]["registry"]["marks"] == {"quarantined": 1, "unhealthy": 0, "not_applicable": 1}
        # the other formats say the same
        junit = ET.parse(os.path.join(report_dir, "drift-junit.xml")).getroot()
        cases = {case.get("name"): case for case in junit.iter("testcase")}
        assert cases[NA_HOST].find("skipped") is not None and cases[QUARANTINED].find("failure").get("type") == "quarantined"
        assert len(list(cases[OK_HOST])) == 0
        with open(os.path.join(report_dir, "fleetpatch_drift.prom"), encoding="utf-8") as handle:
            prom = handle.read()
        assert 'fleetpatch_drift_pairs{environment="prod",service="myapp",status="not_applicable"} 1' in prom
        assert 'fleetpatch_drift_pairs{environment="prod",service="myapp",status="quarantined"} 1' in prom
        assert "fleetpatch_drift_found 1" in prom
        with open(os.path.join(report_dir, "drift-report.md"), encoding="utf-8") as handle:
            markdown = handle.read()
        assert f"| quarantined | prod | {QUARANTINED} | myapp |" in markdown and f"| not applicable | prod | {NA_HOST} | myapp |" in markdown
        # by default quarantined fails a fail_on_drift run (after writing the report)
        gated = drift.reconcile(os.path.join(str(tmp_path), "report-gate"), reconcile_fail_on_drift=True)
        assert gated.status == "failed"
        assert report_result(gated)["msg"].startswith("drift found: 1 quarantined (report: ")
    finally:
        fleet.teardown()


def test_demo_fleet_with_two_environments_and_two_services_fills_the_matrix_and_the_heat_map(tmp_path) -> None:
    """The demo fleet with environments staging and prod and a companion service beside myapp (billing, installed on
    every node): the drift report's environment x service matrix has four cells and its region x tenant heat map counts
    every node, in the JSON and on the HTML page."""
    fleet = DemoFleet(str(tmp_path), demo_fleet_environments=["staging", "prod"], demo_fleet_segments=["web"], demo_fleet_hosts_per_cell=1,
                      demo_fleet_companion_services={"billing": "2.3.0"})
    try:
        fleet.create()
        assert fleet.fleet()["companion_services"]["billing"]["version"] == "2.3.0"
        nodes = fleet.nodes()
        assert len(nodes) == 8 and all(fleet.host_manifest(node, "billing")["version"] == "2.3.0" for node in nodes)
        again = fleet.create()  # nothing left to do
        assert [result["actions"] for result in again.task_results("demo_fleet").values()] == [[]]
        staged = fleet.rollout(policy=FAST, rollout_targets="environment_staging")
        assert staged.status == "successful", staged.stdout[-3000:]
        desired = {"promotion": ["staging", "prod"],
                   "environments": {env: {"myapp": "1.0.1", "billing": "2.3.0"} for env in ("staging", "prod")},
                   "patches": [{"id": "CVE-DEMO-1", "service": "myapp", "fixed_in": ["1.0.1"], "severity": "critical",
                                "released_at": iso(-dt.timedelta(days=1))}]}
        drift = DriftFleet(fleet, str(tmp_path))
        with open(drift.desired_path, "w", encoding="utf-8") as handle:
            yaml.safe_dump(desired, handle)
        report_dir = os.path.join(str(tmp_path), "report")
        result = drift.reconcile(report_dir)
        assert result.status == "successful", result.stdout[-3000:]
        report = drift.report(report_dir)
        assert {(cell["environment"], cell["service"]): (cell["status"], cell["statuses"]["in_sync"], cell["hosts"]) for cell in report["matrix"]} == {
            ("staging", "myapp"): ("in_sync", 4, 4), ("staging", "billing"): ("in_sync", 4, 4),
            ("prod", "myapp"): ("missing_patch", 0, 4), ("prod", "billing"): ("in_sync", 4, 4)}
        with open(os.path.join(report_dir, "drift-report.html"), encoding="utf-8") as handle:
            page = handle.read()
        # each region x tenant cell: a staging host in sync, a prod host lacking the patch
        cells = re.findall(r'<td class="hcell h(\d)" data-hosts="(\d+)" data-in-sync="(\d+)">', page)
        assert cells == [("1", "2", "1")] * 4
        assert page.count('<td class="cell s-') == 4 and "<th>billing</th><th>myapp</th>" in page
    finally:
        fleet.teardown()


def test_sliced_reconcile_jobs_merge_through_the_postgresql_store(drift_fleet: DriftFleet, full_run, postgres) -> None:
    """AWX slices share no disk: three --limit slices (no ",localhost") with empty state dirs save their facts to one
    PostgreSQL store, and a fourth job with an empty state dir reports from the store exactly what one unsliced run did."""
    _result, report_dir, _before = full_run
    dsn = postgres.create_database("drift_slices")
    env = {DSN_VAR: dsn}
    hosts = drift_fleet.fleet.nodes()  # sorted by name, as AWX slices them
    common = {"reconcile_desired_state": drift_fleet.desired_path, "reconcile_now": NOW_TEXT, "fleetpatch_state_backend": "postgresql"}
    for index in range(3):
        part = hosts[index::3]
        state_dir = os.path.join(drift_fleet.base, f"store-slice-{index}")
        result = run_playbook("reconcile.yml", inventory=drift_fleet.fleet.inventory, cmdline=f"--limit {','.join(part)}", env=env,
                              extravars={**common, "reconcile_state_dir": state_dir, "reconcile_report": False,
                                         "reconcile_save_facts_to_store": "drift-job-7"})
        assert result.status == "successful", result.stdout[-3000:]
        assert report_result(result)["facts_stored"]["hosts"] == len(part)
        assert not os.path.exists(os.path.join(state_dir, "reports"))
    store = PostgresStore(os.path.join(drift_fleet.base, "store-reader"), environ=env)
    try:
        assert sorted(record["host"] for record in store.facts_set("drift-job-7")) == hosts
        assert store.facts_set("drift-job-8") == []
    finally:
        store.close()

    # the report job: a fresh container (empty state dir); the patch registry is the controller's file, as for the unsliced run
    merged_dir = os.path.join(drift_fleet.base, "report-from-store")
    registry = os.path.join(drift_fleet.fleet.state_dir, "registry.sqlite3")
    assert os.path.exists(registry)
    merged = run_playbook("reconcile.yml", inventory=drift_fleet.fleet.inventory, env=env,
                          extravars={**common, "reconcile_state_dir": os.path.join(drift_fleet.base, "store-report"),
                                     "reconcile_report_dir": merged_dir, "reconcile_gather": False,
                                     "reconcile_registry_path": registry, "reconcile_facts_from_store": "drift-job-7"})
    assert merged.status == "successful", merged.stdout[-3000:]
    merged_report, unsliced = drift_fleet.report(merged_dir), drift_fleet.report(report_dir)
    assert merged_report["inputs"]["facts_from_store"]["records"] == len(hosts)
    assert merged_report["inputs"]["hosts_from_run"] == 0 and merged_report["inputs"]["facts_files"] == []
    assert row_differences(merged_report, unsliced) == {}
    assert stable(merged_report) == stable(unsliced)
    assert merged_report["fingerprint"] == unsliced["fingerprint"]

    # a set nobody saved fails the report job instead of reporting an empty fleet
    missing = run_playbook("reconcile.yml", inventory=drift_fleet.fleet.inventory, env=env,
                           extravars={**common, "reconcile_state_dir": os.path.join(drift_fleet.base, "store-report"),
                                      "reconcile_report_dir": os.path.join(drift_fleet.base, "report-missing"),
                                      "reconcile_gather": False, "reconcile_facts_from_store": "drift-job-8"})
    assert missing.status == "failed"
    assert "facts set 'drift-job-8' holds no record" in report_result(missing)["msg"]
