"""The event callback and the patch registry on real rollouts of the demo fleet (issue 5).

Events validate against docs/events.schema.json and every hook the callback defines runs; a secret canary given to
the run appears nowhere; tampering with the registry and the event file is found and placed; a run killed mid-wave
leaves a log that verifies up to an incomplete tail and its resume keeps one chain; a failed write only warns.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3

import jsonschema
import pytest
import yaml

from ansible_collections.fleetpatch.rollout.plugins.callback.events import CallbackModule
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils import _registry_cli
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._event_verify import verify_event_file
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._events import read_events
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._registry import Registry, query_hosts, query_patches, query_timeline, verify_all

from .rollout_harness import REPO_ROOT, DemoFleet, run_playbook

pytestmark = pytest.mark.integration

RUN_ID = "FP-DEMO-myapp-1.0.1"
CANARY = "CANARY-5e1f0c-never-log-me"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
with open(os.path.join(REPO_ROOT, "docs", "events.schema.json"), encoding="utf-8") as _handle:
    VALIDATOR = jsonschema.Draft202012Validator(json.load(_handle))
HOOKS = sorted(name for name in vars(CallbackModule) if name.startswith("v2_"))


def events_path(fleet: DemoFleet) -> str:
    return os.path.join(fleet.run_dir(RUN_ID), "events.jsonl")


def cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    return _registry_cli.main(list(args), out=out), out.getvalue()


def canary_playbook(tmp_path) -> str:
    """The rollout, preceded by a play that uses the secret the ways real plays do."""
    path = tmp_path / "canary.yml"
    path.write_text(yaml.safe_dump([
        {"name": "Use secrets", "hosts": "localhost", "gather_facts": False, "tasks": [
            {"name": "A command whose output holds a secret", "ansible.builtin.command": "echo token={{ fleet_api_token }}", "changed_when": False},
            {"name": "A no_log command", "ansible.builtin.command": "echo {{ canary_blob }}", "no_log": True, "changed_when": False},
            {"name": "A fact named like a secret", "ansible.builtin.set_fact": {"service_password": "{{ canary_blob }}"}},
        ]},
        {"ansible.builtin.import_playbook": os.path.join(REPO_ROOT, "playbooks", "rollout.yml")},
    ], sort_keys=False))
    return str(path)


def manifest_with(fleet: DemoFleet, tmp_path, **fields) -> str:
    with open(fleet.manifest(), encoding="utf-8") as handle:
        manifest = yaml.safe_load(handle)
    manifest.update(fields)
    path = tmp_path / f"manifest-{len(fields)}-{abs(hash(json.dumps(fields, sort_keys=True)))}.yml"
    path.write_text(yaml.safe_dump(manifest))
    return str(path)


def every_file(*roots: str) -> dict[str, bytes]:
    found = {}
    for root in roots:
        for directory, _dirs, files in os.walk(root):
            for name in files:
                path = os.path.join(directory, name)
                with open(path, "rb") as handle:
                    found[path] = handle.read()
    return found


def test_full_rollout_is_recorded_schema_valid_correlated_and_without_secrets(make_fleet, tmp_path) -> None:
    unhealthy, unreachable = "us-east-globex-web-prod-01", "us-east-globex-api-prod-01"  # both in wave-2
    fleet = make_fleet(demo_fleet_hosts_per_cell=1, demo_fleet_faults=[
        {"kind": "unhealthy_after", "version": "1.0.1", "match": {"host": unhealthy}},
        {"kind": "unreachable", "match": {"host": unreachable}}])
    policy = {"canary": {"size": 1}, "waves": ["50%", "100%"], "response": "rollback_wave", "error_budget": 3}

    self_approved = manifest_with(fleet, tmp_path, requested_by="alice", approvals=[{"by": "Alice"}])
    refused = fleet.rollout(policy=policy, rollout_patch_manifest=self_approved)
    assert refused.status == "failed" and "alice requested this patch and cannot approve it" in refused.stdout
    assert not os.path.exists(fleet.state_dir)

    manifest = manifest_with(fleet, tmp_path, requested_by="alice", approvals=[{"by": "bob", "role": "service owner"}],
                             classification="functional", severity="medium", justification=f"rotate the leaked {CANARY}")
    result = fleet.rollout(policy=policy, playbook=canary_playbook(tmp_path), rollout_patch_manifest=manifest, awx_job_id=4242,
                           fleet_api_token=CANARY, canary_blob=CANARY + "-blob",
                           env={"TRACEPARENT": f"00-{TRACE}-{PARENT_SPAN}-01", "FLEETPATCH_SECRET_VARS": "canary_blob"})
    assert result.status == "failed", result.stdout[-3000:]  # rolled back: rollout_fail_on_halt fails the job
    assert fleet.summary(RUN_ID)["status"] == "rolled_back"

    events = read_events(events_path(fleet))
    for event in events:
        VALIDATOR.validate(event)
    names = {event["event"] for event in events}
    assert names >= {"playbook.started", "play.started", "run.started", "plan.compiled", "wave.started", "host.task", "host.outcome",
                     "gate.decision", "budget.decision", "rollback.decided", "wave.finished", "rollback.host", "rollback.finished",
                     "run.finished", "registry.recorded", "playbook.finished"}
    # Every hook the callback defines ran, and was counted.
    hooks = events[-1]["data"]["hooks"]
    assert events[-1]["event"] == "playbook.finished" and all(hooks.get(hook, 0) > 0 for hook in HOOKS), (HOOKS, hooks)
    statuses = {event["status"] for event in events if event["event"] == "host.task"}
    assert statuses == {"ok", "failed", "skipped", "unreachable"}
    # One correlation id (the AWX job) and one trace (the caller's) everywhere; a span per host task.
    assert {event["correlation_id"] for event in events} == {"awx-job-4242"}
    assert {event["traceparent"].split("-")[1] for event in events} == {TRACE}
    assert events[0]["data"]["parent_span_id"] == PARENT_SPAN
    applies = [event for event in events if event["event"] == "host.task" and event["action"] == "fleetpatch.rollout.patch_apply"]
    assert len({event["traceparent"] for event in applies}) == len(applies)
    assert all(event["region"] and event["tenant"] and event["segment"] and event["environment"] and event["wave"] for event in applies)
    assert [event["wave"] for event in events if event["event"] == "wave.started"] == ["canary", "wave-1", "wave-2"]
    decision = [event for event in events if event["event"] == "gate.decision"][-1]
    assert (decision["wave"], decision["status"]) == ("wave-2", "rollback_wave")
    assert set(decision["data"]["failed_hosts"]) == {unhealthy, unreachable} and decision["data"]["failures_total"] == 2
    assert fleet.run_state(RUN_ID)["attempts"][-1]["correlation_id"] == "awx-job-4242"

    # The registry: the patch with its approval chain, the run, every host's outcome, a timeline, and a seal.
    registry = Registry(os.path.join(fleet.state_dir, "registry.sqlite3"))
    assert [record["kind"] for record in registry.records()] == ["patch.registered", "run.started", "run.finished", "log.sealed"]
    assert {record["correlation_id"] for record in registry.records()} == {"awx-job-4242"}
    assert [(row["patch_id"], row["state"], row["requested_by"], row["approvers"]) for row in query_patches(registry, state="rolled_back")] == [
        (RUN_ID, "rolled_back", "alice", ["bob"])]
    hosts = {row["host"]: row["outcome"] for row in query_hosts(registry, RUN_ID)}
    assert hosts[unhealthy] == "rolled_back" and hosts[unreachable] == "unreachable" and len(hosts) == len(fleet.nodes())
    timeline = query_timeline(registry, RUN_ID)
    assert [entry["what"] for entry in timeline["timeline"]][:3] == ["registered", "approved", "started"]
    assert [entry["what"] for entry in timeline["timeline"]][-2:] == ["rolled back", "ended rolled_back"]
    assert timeline["justification"] == "rotate the leaked ********" and not timeline["log_incomplete"]
    code, out = cli("--state-dir", fleet.state_dir, "verify")
    assert code == 0 and out.startswith("OK"), out

    # The canary appears nowhere: not in the events, the registry, the checkpoints, any run file, or the output.
    leaks = [path for path, data in every_file(fleet.state_dir).items() if CANARY.encode() in data]
    assert leaks == [] and CANARY not in result.stdout

    # Tampering with copies of what the run left, every kind at once; verify names each place.
    forged = str(tmp_path / "forged")
    shutil.copytree(fleet.state_dir, forged)
    path = os.path.join(forged, "runs", RUN_ID, "events.jsonl")
    with open(path, "rb") as handle:
        lines = handle.read().split(b"\n")[:-1]
    edited = lines[9].replace(b'"status":"ok"', b'"status":"failed"') if b'"status":"ok"' in lines[9] else lines[9] + b" "
    tampered = lines[:9] + [edited] + lines[10:19] + lines[20:29] + [lines[29], lines[29]] + lines[30:39] + [lines[40], lines[39]] + lines[41:-3]
    with open(path, "wb") as handle:
        handle.write(b"\n".join(tampered) + b"\n")
    conn = sqlite3.connect(os.path.join(forged, "registry.sqlite3"))
    with conn:
        conn.execute("UPDATE records SET body = replace(body, '\"alice\"', '\"mallory\"') WHERE seq = 1")
        conn.execute("DELETE FROM records WHERE seq = 2")
    conn.close()
    verified = run_playbook("registry.yml", extravars={"registry_state_dir": forged})
    assert verified.status == "failed"
    report = verified.task_results("registry")["localhost"]["report"]
    found = {(finding["kind"], finding["where"]) for finding in report["findings"]}
    rel = f"runs/{RUN_ID}/events.jsonl: events.jsonl"
    last_seq = len(lines)
    assert {("edited", "registry record #1 (patch.registered, patch FP-DEMO-myapp-1.0.1)"),
            ("deleted", "registry record #3 (run.finished, patch FP-DEMO-myapp-1.0.1)"),
            ("edited", f"{rel} line 10 (seq 10)"),
            ("deleted", f"{rel} line 20 (seq 21)"),
            ("duplicated", f"{rel} line 30 (seq 30)"),
            ("reordered", f"{rel} line 41 (seq 40)"),
            ("truncated", f"{rel} after seq {last_seq - 3}")} <= found, sorted(found)


def test_killed_mid_wave_leaves_a_verifiable_log_and_the_resume_keeps_one_chain(make_fleet) -> None:
    fleet = make_fleet(demo_fleet_hosts_per_cell=1)
    policy = {"canary": {"size": 1}, "waves": ["25%", "100%"], "max_concurrency": 2}
    nodes = fleet.nodes()

    def killed_mid_wave() -> bool:
        return sum(1 for host in nodes if fleet.host_manifest(host)["version"] == "1.0.1") >= 4  # canary + wave-1 + part of wave-2

    first = fleet.rollout(policy=policy, cancel_callback=killed_mid_wave)
    assert first.status in ("canceled", "failed")
    path = events_path(fleet)
    report = verify_event_file(path)
    assert report.ok and report.lines > 0
    assert {finding.kind for finding in report.findings} <= {"incomplete_tail"}
    state = verify_all(fleet.state_dir)
    assert state["ok"], state["findings"]
    killed_lines = report.last_seq
    registry = Registry(os.path.join(fleet.state_dir, "registry.sqlite3"))
    assert query_patches(registry)[0]["state"] == "running"

    resumed = fleet.rollout(policy=policy)
    assert resumed.status == "successful", resumed.stdout[-3000:]
    events = read_events(path)
    for event in events:
        VALIDATOR.validate(event)
    opened = [event for event in events if event["event"] == "log.opened"]
    assert len(opened) == 1 and opened[0]["data"]["continues_seq"] == killed_lines
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    assert len({event["correlation_id"] for event in events}) == 2  # one per playbook run
    report = verify_all(fleet.state_dir)
    assert report["ok"] and not [finding for finding in report["findings"] if finding["severity"] != "info"], report["findings"]
    kinds = [record["kind"] for record in registry.records()]
    assert kinds == ["patch.registered", "run.started", "run.started", "run.finished", "log.sealed"]
    rows = registry.rows()
    assert [row["prev"] for row in rows[1:]] == [row["hash"] for row in rows[:-1]]
    assert query_patches(registry)[0]["state"] == "rolled_out" and query_patches(registry)[0]["runs"] == 2


def test_an_unwritable_event_log_warns_the_rollout_goes_on_and_the_registry_says_incomplete(make_fleet, tmp_path) -> None:
    fleet = make_fleet(demo_fleet_hosts_per_cell=1, demo_fleet_regions=["eu-west"])
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the event log's directory should be")
    result = fleet.rollout(policy={"waves": ["100%"]}, env={"FLEETPATCH_EVENTS_PATH": str(blocker / "events.jsonl")})
    assert result.status == "successful", result.stdout[-3000:]
    assert "cannot write" in result.stdout and "the rollout goes on" in result.stdout
    assert set(fleet.versions().values()) == {"1.0.1"}
    registry = Registry(os.path.join(fleet.state_dir, "registry.sqlite3"))
    finished = registry.latest("run.finished", patch_id=RUN_ID)
    assert finished is not None and finished["body"]["log"]["complete"] is False
    sealed = registry.latest("log.sealed", patch_id=RUN_ID)
    assert sealed is not None and sealed["body"]["complete"] is False and "could not be written" in sealed["body"]["reason"]
    assert query_patches(registry)[0]["log_incomplete"] is True
