"""Staged rollouts on the embedded demo fleet, driven through ansible-runner; assertions read host state and outputs."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket

import pytest
import yaml

from .rollout_harness import DemoFleet, tree_snapshot

pytestmark = pytest.mark.integration

RUN_ID = "FP-DEMO-myapp-1.0.1"
CANARY_HOST = "eu-west-acme-api-prod-01"  # first eu-west host in plan order (region, tenant, segment, name)


def unhealthy(host: str, version: str = "1.0.1") -> dict:
    return {"kind": "unhealthy_after", "version": version, "match": {"host": host}}


def gate_decisions(fleet: DemoFleet) -> list[dict]:
    """Gate decisions with their measured values (an event's details are under data; docs/events.schema.json)."""
    return [dict(event["data"], wave=event["wave"], batch=event["batch"]) for event in fleet.events(RUN_ID) if event["event"] == "gate.decision"]


def test_clean_rollout_patches_every_host_in_plan_order(make_fleet) -> None:
    fleet = make_fleet()
    policy = {"canary": {"size": 1, "groups": ["region=eu-west"]}, "waves": ["25%", "100%"], "disruption_budget": {"segment": 2}}
    result = fleet.rollout(policy=policy)
    assert result.status == "successful", result.stdout[-3000:]
    nodes = fleet.nodes()
    assert fleet.versions() == {host: "1.0.1" for host in nodes}
    for host in nodes:
        manifest = fleet.host_manifest(host)
        assert manifest["previous"]["version"] == "1.0.0"
        assert fleet.health(host)["version"] == "1.0.1"
        assert fleet.releases(host) == ["1.0.0", "1.0.1"]
    summary = fleet.summary(RUN_ID)
    assert summary["status"] == "rolled_out"
    assert summary["counts"]["patched"] == len(nodes)
    with open(os.path.join(fleet.run_dir(RUN_ID), "plan.json"), encoding="utf-8") as handle:
        plan = json.load(handle)
    assert plan["waves"][0]["hosts"] == [CANARY_HOST]
    # Hosts were applied in plan order: the order of host.outcome events follows the plan's host order.
    outcome_hosts = [event["host"] for event in fleet.events(RUN_ID) if event["event"] == "host.outcome"]
    assert outcome_hosts == plan["host_order"]
    # Every batch respected the segment disruption budget.
    for batch in plan["batches"]:
        per_segment: dict[str, int] = {}
        for host in batch["hosts"]:
            key = host.rsplit("-", 2)[0]
            per_segment[key] = per_segment.get(key, 0) + 1
        assert max(per_segment.values()) <= 2

    again = fleet.rollout(policy=policy)
    assert again.status == "successful"
    applied = again.task_results("patch_apply")
    assert set(applied) == set(nodes)
    assert not any(res.get("changed") for res in applied.values())


@pytest.mark.parametrize("canary_response", ["halt", "rollback_wave"])
def test_canary_failure_stops_with_every_other_host_untouched(make_fleet, canary_response: str) -> None:
    fleet = make_fleet(demo_fleet_hosts_per_cell=1, demo_fleet_faults=[unhealthy(CANARY_HOST)])
    before = {host: fleet.host_manifest(host) for host in fleet.nodes()}
    policy = {"canary": {"size": 1, "groups": ["region=eu-west"]}, "waves": ["100%"], "canary_response": canary_response, "error_budget": 3}
    result = fleet.rollout(policy=policy)
    assert result.status == "failed"
    for host in fleet.nodes():
        if host == CANARY_HOST:
            continue
        assert fleet.host_manifest(host) == before[host]
        assert fleet.releases(host) == ["1.0.0"]
    decision = gate_decisions(fleet)[-1]
    assert (decision["wave"], decision["action"]) == ("canary", canary_response)
    assert decision["failed_hosts"] == [CANARY_HOST]
    assert any(CANARY_HOST in reason and "HTTP 503" in reason for reason in decision["reasons"])
    summary = fleet.summary(RUN_ID)
    if canary_response == "halt":
        assert summary["status"] == "halted"
        assert fleet.current_version(CANARY_HOST) == "1.0.1"
    else:
        assert summary["status"] == "rolled_back"
        assert fleet.current_version(CANARY_HOST) == "1.0.0"
        assert fleet.health(CANARY_HOST)["version"] == "1.0.0"
        assert summary["hosts"][CANARY_HOST]["outcome"] == "rolled_back"
    assert len(summary["untouched"]) == len(fleet.nodes()) - 1


def test_later_wave_failure_rolls_back_that_wave_only(make_fleet) -> None:
    bad_host = "us-east-globex-web-prod-01"
    fleet = make_fleet(demo_fleet_hosts_per_cell=1, demo_fleet_faults=[unhealthy(bad_host)])
    policy = {"canary": {"size": 1}, "waves": ["50%", "100%"], "response": "rollback_wave", "error_budget": 3}
    result = fleet.rollout(policy=policy)
    assert result.status == "failed"
    with open(os.path.join(fleet.run_dir(RUN_ID), "plan.json"), encoding="utf-8") as handle:
        plan = json.load(handle)
    waves = {wave["name"]: wave["hosts"] for wave in plan["waves"]}
    assert bad_host in waves["wave-2"]
    for host in waves["canary"] + waves["wave-1"]:
        assert fleet.current_version(host) == "1.0.1", host
    for host in waves["wave-2"]:
        assert fleet.current_version(host) == "1.0.0", host
        assert fleet.health(host)["version"] == "1.0.0"
        assert fleet.host_manifest(host)["version"] == "1.0.0"
    summary = fleet.summary(RUN_ID)
    assert summary["status"] == "rolled_back"
    assert sorted(h for h, e in summary["hosts"].items() if e["outcome"] == "rolled_back") == sorted(waves["wave-2"])
    decision = gate_decisions(fleet)[-1]
    assert decision["action"] == "rollback_wave"
    assert sorted(decision["rollback_hosts"]) == sorted(waves["wave-2"])


def test_quarantine_goes_on_and_resume_skips_the_quarantined_host(make_fleet) -> None:
    bad_host = "eu-west-globex-web-prod-01"
    fleet = make_fleet(demo_fleet_hosts_per_cell=1, demo_fleet_faults=[unhealthy(bad_host)])
    policy = {"canary": {"size": 1}, "waves": ["50%", "100%"], "response": "quarantine", "error_budget": 1}
    result = fleet.rollout(policy=policy)
    assert result.status == "successful", result.stdout[-3000:]
    summary = fleet.summary(RUN_ID)
    assert summary["status"] == "rolled_out"
    assert summary["failures"] == [bad_host]
    assert summary["hosts"][bad_host]["outcome"] == "quarantined"
    assert all(version == "1.0.1" for version in fleet.versions().values())
    again = fleet.rollout(policy=policy)
    assert again.status == "successful"
    assert bad_host not in again.task_results("patch_apply")


def test_spent_error_budget_halts_after_in_flight_hosts_finish(make_fleet) -> None:
    failing = ["eu-west-acme-web-prod-01", "eu-west-acme-web-prod-02", "eu-west-globex-api-prod-01"]
    fleet = make_fleet(demo_fleet_faults=[unhealthy(host) for host in failing])
    policy = {"canary": {"size": 1}, "waves": ["100%"], "max_concurrency": 5, "error_budget": 1, "response": "quarantine"}
    result = fleet.rollout(policy=policy)
    assert result.status == "failed"
    with open(os.path.join(fleet.run_dir(RUN_ID), "plan.json"), encoding="utf-8") as handle:
        plan = json.load(handle)
    in_flight = plan["batches"][1]["hosts"]
    assert set(failing) <= set(in_flight) and len(in_flight) == 5
    for host in in_flight:  # every host of the batch in flight finished its apply
        assert fleet.host_manifest(host)["version"] == "1.0.1", host
    started = set(plan["batches"][0]["hosts"]) | set(in_flight)
    for host in fleet.nodes():
        if host not in started:  # no new host started once the budget was spent
            assert fleet.releases(host) == ["1.0.0"], host
    decision = gate_decisions(fleet)[-1]
    assert decision["action"] == "halt" and decision["budget_spent"] is True
    assert decision["failures_total"] == 3 and decision["budget_limit"] == 1
    assert fleet.summary(RUN_ID)["status"] == "halted"


def test_killed_mid_wave_then_resumed_matches_an_uninterrupted_run(make_fleet) -> None:
    fleet = make_fleet()
    policy = {"canary": {"size": 1}, "waves": ["25%", "100%"], "max_concurrency": 4}
    nodes = fleet.nodes()

    def killed_mid_wave() -> bool:
        done = sum(1 for host in nodes if fleet.host_manifest(host)["version"] == "1.0.1")
        return done >= 7  # canary + wave-1 (4) + part of wave-2

    first = fleet.rollout(policy=policy, cancel_callback=killed_mid_wave)
    assert first.status in ("canceled", "failed")
    done_before = {host for host in nodes if fleet.host_manifest(host)["version"] == "1.0.1"}
    assert 7 <= len(done_before) < len(nodes)

    resumed = fleet.rollout(policy=policy)
    assert resumed.status == "successful", resumed.stdout[-3000:]
    applied = resumed.task_results("patch_apply")
    assert {host for host, res in applied.items() if not res.get("changed")} >= done_before
    # Same end state as an uninterrupted run: every host on 1.0.1 with 1.0.0 as verified rollback point.
    for host in nodes:
        manifest = fleet.host_manifest(host)
        assert (manifest["version"], manifest["previous"]["version"]) == ("1.0.1", "1.0.0")
        assert fleet.releases(host) == ["1.0.0", "1.0.1"]  # no half-unpacked release left behind
    summary = fleet.summary(RUN_ID)
    assert summary["status"] == "rolled_out" and summary["attempts"] == 2
    assert fleet.run_lock(RUN_ID) is None


def test_check_mode_and_preview_change_nothing_on_disk(make_fleet) -> None:
    fleet = make_fleet(demo_fleet_hosts_per_cell=1)
    before = tree_snapshot(os.path.join(fleet.path, "hosts"))
    checked = fleet.rollout(policy={"waves": ["100%"]}, cmdline="--check --diff")
    assert checked.status == "successful", checked.stdout[-3000:]
    would = checked.task_results("patch_apply")
    assert set(would) == set(fleet.nodes()) and all(res["changed"] for res in would.values())
    assert all(res["diff"]["after"]["version"] == "1.0.1" for res in would.values())
    previewed = fleet.rollout(policy={"waves": ["100%"]}, rollout_preview=True)
    assert previewed.status == "successful"
    assert "canary" in previewed.stdout
    assert tree_snapshot(os.path.join(fleet.path, "hosts")) == before
    assert not os.path.exists(fleet.state_dir)


def _write_lock(fleet: DemoFleet, *, expires: dt.datetime) -> None:
    """Another run's lock over every node, planted through the store (a live owner: this test's process)."""
    ttl = 3600
    fleet.store().acquire_lock("OTHER", hosts=fleet.nodes(), owner="someone@elsewhere", controller=socket.gethostname(), pid=os.getpid(),
                               ttl_seconds=ttl, now=expires - dt.timedelta(seconds=ttl))


def test_second_rollout_is_refused_by_the_lock_and_stale_lock_needs_breaking(make_fleet) -> None:
    fleet = make_fleet(demo_fleet_hosts_per_cell=1)
    now = dt.datetime.now(dt.timezone.utc)
    _write_lock(fleet, expires=now + dt.timedelta(hours=1))
    before = tree_snapshot(os.path.join(fleet.path, "hosts"))
    refused = fleet.rollout(policy={"waves": ["100%"]})
    assert refused.status == "failed"
    assert "are locked by a running rollout: run OTHER owned by someone@elsewhere" in refused.stdout
    _write_lock(fleet, expires=now - dt.timedelta(minutes=1))
    stale = fleet.rollout(policy={"waves": ["100%"]})
    assert stale.status == "failed" and "stale lock (expired at" in stale.stdout
    assert tree_snapshot(os.path.join(fleet.path, "hosts")) == before
    broken = fleet.rollout(policy={"waves": ["100%"]}, rollout_break_lock=True)
    assert broken.status == "successful", broken.stdout[-3000:]
    assert all(version == "1.0.1" for version in fleet.versions().values())


def test_bad_input_fails_before_any_host_is_touched(make_fleet, tmp_path) -> None:
    fleet = make_fleet(demo_fleet_hosts_per_cell=1)
    before = tree_snapshot(os.path.join(fleet.path, "hosts"))
    with open(fleet.manifest(), encoding="utf-8") as handle:
        manifest = yaml.safe_load(handle)
    manifest["artifact"]["sha256"] = "not-a-digest"
    bad_manifest = tmp_path / "bad.yml"
    bad_manifest.write_text(yaml.safe_dump(manifest))
    result = fleet.rollout(rollout_patch_manifest=str(bad_manifest))
    assert result.status == "failed"
    assert "artifact.sha256 must be 64 hexadecimal characters" in result.stdout

    bad_policy = fleet.rollout(policy={"waves": ["10%"]})
    assert bad_policy.status == "failed" and "policy.waves cover" in bad_policy.stdout

    inventory_copy = tmp_path / "broken.fleet.yml"
    with open(fleet.inventory, encoding="utf-8") as handle:
        inventory = yaml.safe_load(handle)
    victim = fleet.nodes()[3]
    del inventory["hosts"][victim]["fleet_tenant"]
    inventory_copy.write_text(yaml.safe_dump(inventory))
    shutil.copy(fleet.inventory, tmp_path / "keep.fleet.yml")
    from .rollout_harness import run_playbook

    missing = run_playbook("rollout.yml", inventory=str(inventory_copy),
                           extravars={"rollout_patch_manifest": fleet.manifest(), "rollout_state_dir": fleet.state_dir})
    assert missing.status == "failed"
    assert f"host '{victim}': variable 'fleet_tenant' is missing" in missing.stdout
    assert tree_snapshot(os.path.join(fleet.path, "hosts")) == before
    assert not os.path.exists(os.path.join(fleet.state_dir, "runs"))
