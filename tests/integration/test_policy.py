"""Change policy on the demo fleet: a rollout that waits for its window and a freeze, and emergency overrides.

The calendar's clock is injected (rollout_clock, test only); assertions read host state, events, plan and registry.
"""

from __future__ import annotations

import copy
import json
import os

import pytest
import yaml

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._registry import Registry, query_timeline

from .rollout_harness import DemoFleet, tree_snapshot

pytestmark = pytest.mark.integration

RUN_ID = "FP-DEMO-myapp-1.0.1"
FLEET = {"demo_fleet_regions": ["eu-west", "us-east"], "demo_fleet_tenants": ["acme"], "demo_fleet_segments": ["web"],
         "demo_fleet_hosts_per_cell": 2}
# canary: first eu-west host; wave-1: the other eu-west host; wave-2: both us-east hosts (waves never span regions)
POLICY = {"canary": {"size": 1, "groups": ["region=eu-west"]}, "waves": ["100%"], "wave_boundary": "region", "bake_seconds": 0}
CALENDAR_POLICY = {
    "calendar": {
        "windows": [{"name": "nightly", "timezone": "UTC", "weekly": {"start": "00:00", "end": "06:00"}}],
        # midnight to midnight in New York (EDT since March 8): 2026-03-10T04:00Z to 2026-03-12T04:00Z
        "freezes": [{"name": "us-quarter-close", "scope": {"region": "us-east"}, "timezone": "America/New_York",
                     "once": {"start": "2026-03-10T00:00", "end": "2026-03-12T00:00"}}],
    },
}
SECURITY_POLICY = {
    "override": {"min_approvers": 2, "max_validity": "12h"},
    "calendar": {"freezes": [{"name": "company-freeze", "timezone": "Europe/Berlin",
                              "once": {"start": "2026-03-01T00:00", "end": "2026-04-01T00:00"}}]},
}
CLOCK = "2026-03-11T01:00:00Z"


@pytest.fixture
def fleet(tmp_path):
    demo = DemoFleet(str(tmp_path / "fleet"), **FLEET)
    demo.create()
    yield demo
    demo.teardown()


def write(tmp_path, name: str, data) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def events(fleet: DemoFleet, name: str) -> list[dict]:
    return [event for event in fleet.events(RUN_ID) if event["event"] == name]


def hosts_by_region(fleet: DemoFleet) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for host, variables in fleet.inventory_hosts().items():
        if variables.get("fleet_role", "node") == "node":
            found.setdefault(variables["fleet_region"], []).append(host)
    return {region: sorted(hosts) for region, hosts in found.items()}


def test_rollout_waits_for_its_window_pauses_at_a_freeze_and_resumes_when_the_window_opens(fleet, tmp_path) -> None:
    change_policy = write(tmp_path, "change-policy.yml", CALENDAR_POLICY)
    regions = hosts_by_region(fleet)
    hosts_root = os.path.join(fleet.path, "hosts")
    untouched = tree_snapshot(hosts_root)
    us_roots = [os.path.join(hosts_root, host) for host in regions["us-east"]]
    us_untouched = tree_snapshot(*us_roots)

    # The preview shows which waves fit at the clock: the eu-west waves do, the us-east wave waits for the freeze.
    preview = fleet.rollout(policy=POLICY, rollout_change_policy=change_policy, rollout_clock=CLOCK, rollout_preview=True)
    assert preview.status == "successful", preview.stdout[-3000:]
    assert "change scheduled/functional, severity -, profile routine" in preview.stdout
    assert "canary  fits   window nightly until 2026-03-11T06:00:00Z" in preview.stdout
    assert "wave-2  waits  freeze us-quarter-close until 2026-03-12T04:00:00Z" in preview.stdout
    schedule = preview.task_results("rollout_plan")["localhost"]["schedule"]
    assert [(entry["wave"], entry["fits"], entry["next_open"]) for entry in schedule] == [
        ("canary", True, None), ("wave-1", True, None), ("wave-2", False, "2026-03-12T04:00:00Z")]
    assert tree_snapshot(hosts_root) == untouched

    # Before the window opens: the first batch waits, nothing is touched.
    early = fleet.rollout(policy=POLICY, rollout_change_policy=change_policy, rollout_clock="2026-03-10T23:59:59Z")
    assert early.status == "failed"  # rollout_fail_on_wait: the job is not complete
    assert "outside maintenance window nightly" in early.stdout
    assert tree_snapshot(hosts_root) == untouched
    summary = fleet.summary(RUN_ID)
    assert summary["status"] == "waiting_window"
    assert summary["waiting"]["wave"] == "canary" and summary["waiting"]["next_open"] == "2026-03-11T00:00:00Z"

    # Inside the window but inside the us-east freeze: eu-west is patched, the run pauses before wave-2.
    paused = fleet.rollout(policy=POLICY, rollout_change_policy=change_policy, rollout_clock=CLOCK, rollout_fail_on_wait=False)
    assert paused.status == "successful", paused.stdout[-3000:]
    assert {host: fleet.current_version(host) for host in regions["eu-west"]} == {host: "1.0.1" for host in regions["eu-west"]}
    assert tree_snapshot(*us_roots) == us_untouched
    assert all(fleet.current_version(host) == "1.0.0" for host in regions["us-east"])
    summary = fleet.summary(RUN_ID)
    assert summary["status"] == "waiting_window"
    assert summary["waiting"]["wave"] == "wave-2"
    assert summary["waiting"]["reasons"] == ["freeze us-quarter-close until 2026-03-12T04:00:00Z"]
    assert sorted(summary["waiting"]["blocked_hosts"]) == regions["us-east"]
    waiting = [event for event in events(fleet, "window.checked") if event["status"] == "waiting"]
    assert [(event["wave"], event["data"]["clock"], event["data"]["next_open"]) for event in waiting] == [
        ("canary", "2026-03-10T23:59:59Z", "2026-03-11T00:00:00Z"), ("wave-2", CLOCK, "2026-03-12T04:00:00Z")]
    # no host of wave-2 has any event past the pause
    applied = {event["host"] for event in fleet.events(RUN_ID) if event["event"] == "host.task"
               and event["action"] == "fleetpatch.rollout.patch_apply"}
    assert applied == set(regions["eu-west"])
    with open(os.path.join(fleet.run_dir(RUN_ID), "plan.json"), encoding="utf-8") as handle:
        plan = json.load(handle)
    assert [(entry["wave"], entry["fits"]) for entry in plan["schedule"]["waves"]] == [("canary", True), ("wave-1", True), ("wave-2", False)]
    assert plan["change"]["profile"] == "routine" and plan["schedule"]["evaluated_at"] == CLOCK

    # The freeze is over and the window is open: re-running resumes and completes.
    resumed = fleet.rollout(policy=POLICY, rollout_change_policy=change_policy, rollout_clock="2026-03-12T04:00:00Z")
    assert resumed.status == "successful", resumed.stdout[-3000:]
    assert fleet.versions() == {host: "1.0.1" for host in fleet.nodes()}
    assert all(fleet.health(host)["version"] == "1.0.1" for host in fleet.nodes())
    assert fleet.summary(RUN_ID)["status"] == "rolled_out"
    registry = Registry(os.path.join(fleet.state_dir, "registry.sqlite3"))
    finished = [record["body"]["status"] for record in registry.records() if record["kind"] == "run.finished"]
    assert finished == ["waiting_window", "waiting_window", "rolled_out"]


def emergency_manifest(fleet: DemoFleet, tmp_path, **changes) -> str:
    with open(fleet.manifest(), encoding="utf-8") as handle:
        manifest = yaml.safe_load(handle)
    manifest.update(change_type="emergency", classification="security", justification="CVE-2026-1234 in the session handler",
                    security={"exploitability": "active", "data_exposure": "personal", "affected_segments": ["consumer", "enterprise"]})
    for key, value in changes.items():
        if value is None:
            manifest.pop(key, None)
        else:
            manifest[key] = value
    return write(tmp_path, f"emergency-{len(os.listdir(tmp_path))}.yml", manifest)


def test_emergency_override_refusals_touch_nothing_and_a_valid_one_goes_through_the_freeze(fleet, tmp_path) -> None:
    change_policy = write(tmp_path, "change-policy.yml", SECURITY_POLICY)
    manifest = emergency_manifest(fleet, tmp_path)
    hosts_root = os.path.join(fleet.path, "hosts")
    untouched = tree_snapshot(hosts_root)
    override = {"patch_id": RUN_ID, "hosts": fleet.nodes(), "justification": "actively exploited, customer data at risk",
                "ticket": "INC-4711", "requested_by": "oncall-carol", "approvers": ["ciso-dave", "cto-erin"],
                "expires": "2026-03-11T03:00:00Z"}
    common = {"policy": POLICY, "rollout_change_policy": change_policy, "rollout_clock": CLOCK, "rollout_patch_manifest": manifest}

    def refused(message: str, **changes) -> None:
        data = copy.deepcopy(override)
        data.update(changes)
        result = fleet.rollout(rollout_override={key: value for key, value in data.items() if value is not None}, **common)
        assert result.status == "failed"
        assert message in result.stdout, result.stdout[-3000:]
        assert tree_snapshot(hosts_root) == untouched

    # A missing manifest field stops the run before any host, naming the field.
    missing = fleet.rollout(**dict(common, rollout_patch_manifest=emergency_manifest(fleet, tmp_path, justification=None)))
    assert missing.status == "failed" and "missing required arguments: justification" in missing.stdout
    # Without an override, even an emergency waits for the freeze.
    frozen = fleet.rollout(**common)
    assert frozen.status == "failed" and "freeze company-freeze until 2026-03-31T22:00:00Z" in frozen.stdout
    assert tree_snapshot(hosts_root) == untouched
    refused("override.approvers[0]: oncall-carol requested the override and cannot approve the override",
            approvers=["oncall-carol", "ciso-dave"])
    refused("override.justification: a justification is required", justification=None)
    refused("override.expires: the override expired at 2026-03-11T00:59:59Z", expires="2026-03-11T00:59:59Z")
    registry = Registry(os.path.join(fleet.state_dir, "registry.sqlite3"))
    refusals = [record["body"] for record in registry.records(patch_id=RUN_ID) if record["kind"] == "patch.override"]
    assert [body["status"] for body in refusals] == ["refused"] * 3
    assert refusals[0]["reason"].startswith("override.approvers[0]: oncall-carol requested the override")

    result = fleet.rollout(rollout_override=override, **common)
    assert result.status == "successful", result.stdout[-3000:]
    assert fleet.versions() == {host: "1.0.1" for host in fleet.nodes()}
    assert fleet.summary(RUN_ID)["status"] == "rolled_out"
    classified = events(fleet, "change.classified")[-1]["data"]
    assert (classified["profile"], classified["severity"], classified["score"]["score"]) == ("emergency-security", "critical", 9)
    accepted = events(fleet, "override.accepted")[-1]["data"]["override"]
    assert (accepted["ticket"], accepted["approvers"], accepted["expires"]) == ("INC-4711", ["ciso-dave", "cto-erin"], "2026-03-11T03:00:00Z")
    applied = events(fleet, "override.applied")
    assert {event["wave"] for event in applied} == {"canary", "wave-1", "wave-2"}
    assert all("company-freeze" in " ".join(event["data"]["broken"]) for event in applied)
    records = [record for record in registry.records(patch_id=RUN_ID) if record["kind"] == "patch.override"]
    assert [record["body"]["status"] for record in records] == ["refused", "refused", "refused", "accepted"]
    assert records[-1]["body"]["override"]["hosts"] == fleet.nodes() and records[-1]["run_id"] == RUN_ID
    timeline = query_timeline(registry, RUN_ID)
    assert [entry["status"] for entry in timeline["overrides"]] == ["refused", "refused", "refused", "accepted"]
    assert any(entry["what"] == "override" and "accepted: INC-4711 by oncall-carol" in entry["detail"] for entry in timeline["timeline"])


def test_drift_report_takes_its_time_to_patch_targets_from_the_change_policy(tmp_path) -> None:
    from .rollout_harness import run_playbook

    change_policy = write(tmp_path, "change-policy.yml", {"profiles": [
        {"name": "emergency-security", "match": {"change_type": ["emergency"], "classification": ["security"]},
         "time_to_patch": {"critical": "24h", "high": "3d"}},
        {"name": "routine", "time_to_patch": {"critical": "7d", "high": "14d", "medium": "30d", "low": "90d"}}]})
    report = {"desired": {"environments": {"prod": {"myapp": {"version": "1.0.1"}}}}, "change_policy": change_policy,
              "registry": False, "state_dir": str(tmp_path / "state")}
    tasks = [{"name": "Reconcile nothing, read only", "fleetpatch.rollout.drift_report": report, "check_mode": True, "register": "report"},
             {"name": "Show the targets", "ansible.builtin.debug": {"var": "report.slo"}}]
    playbook = write(tmp_path, "drift.yml", [{"name": "Drift report with the change policy's targets", "hosts": "localhost",
                                              "gather_facts": False, "tasks": tasks}])
    result = run_playbook(playbook)
    assert result.status == "successful", result.stdout[-3000:]
    slo = result.task_results("drift_report")["localhost"]["slo"]
    assert {entry["severity"]: entry["target_seconds"] for entry in slo} == {
        "critical": 86400.0, "high": 259200.0, "medium": 2592000.0, "low": 7776000.0}
    assert not (tmp_path / "state").exists()
