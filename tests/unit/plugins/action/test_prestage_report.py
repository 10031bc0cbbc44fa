"""fleetpatch.rollout.prestage_report: staged percent per region, the pre-staging report and the readiness gate."""

from __future__ import annotations

import copy
import json
import os
import typing as t

import pytest
from ansible.errors import AnsibleActionFail

from conftest import MANIFEST, run_action, run_arg, stored_run


def report_args(hosts: list[str], run: dict[str, t.Any] | None = None, **changes: t.Any) -> dict[str, t.Any]:
    args = {"hosts": hosts, **({"run": run_arg(run)} if run is not None else {}), **changes}
    if "patch_manifest" not in changes:
        args["patch"] = copy.deepcopy(MANIFEST)
    return args


def staged(fleet: dict[str, t.Any], results: dict[str, t.Any]) -> dict[str, t.Any]:
    task_vars = json.loads(json.dumps(fleet["task_vars"]))
    for host, result in results.items():
        task_vars["hostvars"][host]["__prestage_result"] = result
    return task_vars


READY = {"ready": True, "staged": {"kind": "full"}, "bytes_by_source": {"origin": 100}}


def test_prestaging_report_is_written_per_patch(fleet: dict[str, t.Any]) -> None:
    task_vars = staged(fleet, {"node1": READY, "node2": READY, "node3": READY, "node4": {"ready": False, "reason": "disk full"}})
    result = run_action("prestage_report", report_args(["node1", "node2", "node3", "node4"], state_dir=fleet["state_dir"]), task_vars)
    # pre-staging (no run): a region that is not staged fails with its reason, and the report is still written
    assert result["failed"] and result["msg"] == "region eu: failed: 1 of 2 nodes not staged (node4: disk full)"
    report = result["report"]
    assert (report["hosts"], report["ready"], report["percent"]) == (4, 3, 75.0)
    assert report["not_ready"] == {"node4": "disk full"} and report["skip_hosts"] == []
    assert result["report_path"] == os.path.join(fleet["state_dir"], "prestage", "FP-UNIT-1.json")
    with open(result["report_path"], encoding="utf-8") as handle:
        assert json.load(handle)["percent"] == 75.0
    assert "fleetpatch_events" not in result


def test_fail_below_fails_with_the_percent(fleet: dict[str, t.Any]) -> None:
    task_vars = staged(fleet, {"node1": READY})
    result = run_action("prestage_report", report_args(["node1", "node2"], state_dir=fleet["state_dir"], fail_below=90), task_vars)
    assert result["failed"] and result["msg"].startswith("only 50.0% of the hosts are staged, below fail_below 90.0%")


def test_readiness_gate_skips_unready_hosts_of_the_run(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    task_vars = staged(fleet, {"node1": READY, "node2": READY, "node3": READY})
    result = run_action("prestage_report", report_args(["node1", "node2", "node3", "node4"], planned), task_vars)
    assert not result.get("failed"), result.get("msg")
    assert result["skip_hosts"] == ["node4"]
    assert result["report_path"] == os.path.join(planned["run_dir"], "readiness.json")
    assert stored_run(planned)["hosts"]["node4"]["outcome"] == "not_staged"
    assert "prestage.readiness" in [event["event"] for event in result["fleetpatch_events"]]


def test_check_mode_writes_no_report(fleet: dict[str, t.Any]) -> None:
    result = run_action("prestage_report", report_args(["node1"], state_dir=fleet["state_dir"]), staged(fleet, {"node1": READY}), check_mode=True)
    assert result["report"]["percent"] == 100.0 and not os.path.exists(result["report_path"])


def test_missing_manifest_file_is_named(fleet: dict[str, t.Any]) -> None:
    result = run_action("prestage_report", report_args(["node1"], state_dir=fleet["state_dir"], patch_manifest="nope.yml"), fleet["task_vars"])
    assert result["failed"] and result["msg"].startswith("patch_manifest nope.yml: ")


def test_patch_and_manifest_file_exclude_each_other(fleet: dict[str, t.Any]) -> None:
    with pytest.raises(AnsibleActionFail, match="mutually exclusive"):
        run_action("prestage_report", dict(report_args(["node1"]), patch_manifest="x.yml"), fleet["task_vars"])


# --------------------------------------------------------------------------------------------------- pre-staging records

DIGEST = "a" * 64
FULL_READY = {"ready": True, "staged": {"sha256": DIGEST, "kind": "full", "size": 10, "signature_verified": False}}


def records_of(state_dir: str) -> dict[str, t.Any]:
    from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store import open_store

    return open_store(state_dir).staged_records(DIGEST)


def test_prestaging_run_records_the_ready_nodes_and_drops_the_unready(fleet: dict[str, t.Any]) -> None:
    task_vars = staged(fleet, {"node1": FULL_READY, "node2": FULL_READY, "node3": {"ready": True, "staged": {"installed": "1.0.1"}}})
    result = run_action("prestage_report", report_args(["node1", "node2", "node3", "node4"], state_dir=fleet["state_dir"]), task_vars)
    assert result["records"]["saved"] == 3 and result["records"]["dropped"] == 0
    found = records_of(fleet["state_dir"])
    assert sorted(found) == ["node1", "node2", "node3"]  # node4 did not run (no result): nothing said of it
    assert {key: found["node1"][key] for key in ("artifact_sha256", "sha256", "kind", "patch_id", "signature_verified")} == {
        "artifact_sha256": DIGEST, "sha256": DIGEST, "kind": "full", "patch_id": "FP-UNIT-1", "signature_verified": False}
    assert found["node3"]["kind"] == "installed" and found["node3"]["version"] == "1.0.1" and found["node3"]["sha256"] is None
    assert found["node1"]["staged_at"] == result["report"]["at"] and found["node1"]["job"]["owner"]
    # the next pre-staging run finds node2 without its copy: its record goes, node1's stays
    task_vars = staged(fleet, {"node1": FULL_READY, "node2": {"ready": False, "reason": "not staged: full aaaa is not cached"}})
    result = run_action("prestage_report", report_args(["node1", "node2"], state_dir=fleet["state_dir"]), task_vars)
    assert result["records"] == dict(result["records"], saved=1, dropped=1)
    assert sorted(records_of(fleet["state_dir"])) == ["node1", "node3"]


def test_prestaging_run_in_check_mode_records_nothing(fleet: dict[str, t.Any]) -> None:
    task_vars = staged(fleet, {"node1": FULL_READY})
    result = run_action("prestage_report", report_args(["node1"], state_dir=fleet["state_dir"]), task_vars, check_mode=True)
    assert "records" not in result and records_of(fleet["state_dir"]) == {}


def save_records(state_dir: str, records: dict[str, dict[str, t.Any]]) -> None:
    from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store import iso, open_store, utc_now

    now = iso(utc_now())
    open_store(state_dir).save_staged(DIGEST, {host: {"artifact_sha256": DIGEST, "sha256": DIGEST, "kind": "full", "staged_at": now,
                                                      "signature_verified": False, **record} for host, record in records.items()})


def test_lookup_takes_recorded_hosts_as_staged_and_queues_the_others(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    save_records(fleet["state_dir"], {"node1": {}, "node2": {"staged_at": "2026-01-01T00:00:00.000000Z"}, "node3": {"sha256": "c" * 64}})
    result = run_action("prestage_report", report_args(["node1", "node2", "node3", "node4"], planned, lookup=True), fleet["task_vars"])
    assert not result.get("failed"), result.get("msg")
    # node2's record is older than max_age, node3's names another copy, node4 has none
    assert list(result["staged"]) == ["node1"] and result["check_hosts"] == ["node2", "node3", "node4"]
    assert result["msg"] == "1 of 4 host(s) staged by their pre-staging record; 3 to check on the host"
    for changes in ({"readiness": "host"}, {"max_age": 0}):
        every = run_action("prestage_report", report_args(["node1", "node2"], planned, lookup=True, **changes), fleet["task_vars"])
        assert every["staged"] == {} and every["check_hosts"] == ["node1", "node2"]


def test_lookup_wants_a_verified_signature_when_the_policy_verifies_them(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    save_records(fleet["state_dir"], {"node1": {}, "node2": {"signature_verified": True}})
    run = dict(planned, artifacts=dict(planned.get("artifacts") or {}, allowed_signers="release@example ssh-ed25519 AAAA"))
    patch = dict(copy.deepcopy(MANIFEST))
    patch["artifact"] = dict(patch["artifact"], signature="-----BEGIN SSH SIGNATURE-----")
    args = dict(report_args(["node1", "node2"], run, lookup=True), patch=patch)
    result = run_action("prestage_report", args, fleet["task_vars"])
    assert list(result["staged"]) == ["node2"] and result["check_hosts"] == ["node1"]


def test_lookup_needs_the_run(fleet: dict[str, t.Any]) -> None:
    result = run_action("prestage_report", report_args(["node1"], lookup=True), fleet["task_vars"])
    assert result["failed"] and result["msg"].startswith("lookup needs run")


def test_report_counts_recorded_hosts_as_ready_with_the_checked_ones(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    record = {"artifact_sha256": DIGEST, "sha256": DIGEST, "kind": "full", "size": 10}
    task_vars = staged(fleet, {"node3": READY, "node4": {"ready": False, "reason": "not staged: full aaaa is not cached"}})
    result = run_action("prestage_report", report_args(["node1", "node2", "node3", "node4"], planned, unstaged="skip",
                                                       staged={"node1": record, "node2": record}), task_vars)
    assert not result.get("failed"), result.get("msg")
    report = result["report"]
    assert (report["ready"], report["hosts"], report["from_records"]) == (3, 4, 2)
    assert result["skip_hosts"] == ["node4"] and report["kinds"] == {"full": 3}
    assert result["lines"][1] == "  2 host(s) staged by their pre-staging record (nothing ran on them)"
    state = stored_run(planned)
    assert state["hosts"]["node4"]["outcome"] == "not_staged"
    # the gate reads the choice: a copy missing at apply time is not_staged unless rollout_unstaged=fail
    assert state["attempts"][-1]["unstaged"] == "skip"
