"""fleetpatch.rollout.drift_report: host facts reconciled with the desired state, the report files, the drift gate."""

from __future__ import annotations

import json
import os
import typing as t

import pytest
from ansible.errors import AnsibleActionFail

from conftest import run_action

DESIRED: dict[str, t.Any] = {
    "promotion": ["staging", "prod"],
    "environments": {"staging": {"myapp": "1.0.1"}},
    "services": {"myapp": {"builds": {"1.0.0": "a" * 64, "1.0.1": "b" * 64}}},
}


def facts(version: str, sha: str) -> dict[str, t.Any]:
    services = {"myapp": {"state": "ok", "reason": None, "version": version, "artifact_sha256": sha, "installed_at": "2026-03-02T00:00:00Z"}}
    return {"changed": False, "ansible_facts": {"fleetpatch_patch": {"collected_at": "2026-03-09T12:00:00Z", "services": services}}}


def report_args(fleet: dict[str, t.Any], hosts: list[str], **changes: t.Any) -> dict[str, t.Any]:
    return {"hosts": hosts, "desired": json.loads(json.dumps(DESIRED)), "registry": False, "state_dir": fleet["state_dir"],
            "now": "2026-03-10T00:00:00Z", **changes}


def with_facts(fleet: dict[str, t.Any]) -> dict[str, t.Any]:
    task_vars = json.loads(json.dumps(fleet["task_vars"]))
    task_vars["hostvars"]["node1"]["__reconcile_facts"] = facts("1.0.1", "b" * 64)
    task_vars["hostvars"]["node2"]["__reconcile_facts"] = facts("1.0.0", "a" * 64)
    task_vars["hostvars"]["node3"]["__reconcile_facts"] = {"unreachable": True, "msg": "ssh timed out"}
    return task_vars


def test_report_counts_statuses_and_writes_every_format(fleet: dict[str, t.Any]) -> None:
    result = run_action("drift_report", report_args(fleet, ["node1", "node2", "node3"]), with_facts(fleet))
    assert not result.get("failed"), result.get("msg")
    statuses = {status: count for status, count in result["summary"]["statuses"].items() if count}
    assert statuses == {"in_sync": 1, "drifted": 1, "unknown": 1}
    assert {row["host"]: row["status"] for row in result["drift_sample"]}["node2"] != "in_sync"
    out_dir = os.path.join(fleet["state_dir"], "reports", "drift")
    assert set(result["paths"]) >= {"json", "html"} and all(path.startswith(out_dir) for path in result["paths"].values())
    for path in result["paths"].values():
        assert os.path.getsize(path) > 0
    with open(result["paths"]["json"], encoding="utf-8") as handle:
        assert json.load(handle)["fingerprint"] == result["fingerprint"]
    assert result["now"] == "2026-03-10T00:00:00Z" and result["inputs"]["hosts_from_run"] == 3


def test_fail_on_drift_fails_naming_the_counts(fleet: dict[str, t.Any]) -> None:
    result = run_action("drift_report", report_args(fleet, ["node1", "node2"], fail_on_drift=True), with_facts(fleet))
    assert result["failed"] is True and result["msg"].startswith("drift found: 1 ")


def test_check_mode_writes_no_file(fleet: dict[str, t.Any]) -> None:
    result = run_action("drift_report", report_args(fleet, ["node1"]), with_facts(fleet), check_mode=True)
    assert result["written"] is False and not any(os.path.exists(path) for path in result["paths"].values())


def test_saved_facts_merge_into_a_later_report(fleet: dict[str, t.Any], tmp_path: t.Any) -> None:
    saved = str(tmp_path / "slice1.jsonl")
    first = run_action("drift_report", report_args(fleet, ["node1", "node2"], save_facts=saved, report=False), with_facts(fleet))
    assert first == {"changed": False, "check_mode": False, "facts_file": saved, "hosts": 2, "paths": {}}
    merged = run_action("drift_report", report_args(fleet, [], facts_files=[saved]), fleet["task_vars"])
    direct = run_action("drift_report", report_args(fleet, ["node1", "node2"]), with_facts(fleet))
    assert merged["summary"]["statuses"] == direct["summary"]["statuses"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"now": "yesterday"}, "fleetpatch.rollout.drift_report: now 'yesterday' is not an ISO 8601 time"),
        ({"desired_state": "/nonexistent/desired.yml"}, "fleetpatch.rollout.drift_report: desired state file /nonexistent/desired.yml does not exist"),
        ({"desired": {"colours": 1}}, "fleetpatch.rollout.drift_report: inline desired state: unknown key(s) colours"),
    ],
)
def test_bad_input_fails_naming_it(fleet: dict[str, t.Any], changes: dict[str, t.Any], message: str) -> None:
    result = run_action("drift_report", report_args(fleet, ["node1"], **changes), with_facts(fleet))
    assert result["failed"] is True and result["changed"] is False and result["msg"].startswith(message), result["msg"]


def test_unknown_format_is_an_argument_error(fleet: dict[str, t.Any]) -> None:
    with pytest.raises(AnsibleActionFail, match="formats"):
        run_action("drift_report", report_args(fleet, ["node1"], formats=["pdf"]), with_facts(fleet))


def test_facts_saved_to_the_store_by_slices_merge_into_a_report_from_the_store(fleet: dict[str, t.Any], tmp_path: t.Any) -> None:
    # the embedded (SQLite) store of one state dir; integration tests do the same on PostgreSQL across state dirs
    task_vars = with_facts(fleet)
    for hosts in (["node1"], ["node2", "node3"]):
        saved = run_action("drift_report", report_args(fleet, hosts, save_facts_to_store="drift-7", report=False), task_vars)
        assert saved["facts_stored"]["set"] == "drift-7" and saved["facts_stored"]["hosts"] == len(hosts), saved
    rerun = run_action("drift_report", report_args(fleet, ["node1"], save_facts_to_store="drift-7", report=False), task_vars)
    assert rerun["facts_stored"]["hosts"] == 1  # node1 replaced, not added twice
    merged = run_action("drift_report", report_args(fleet, [], facts_from_store="drift-7", output_dir=str(tmp_path / "merged")),
                        fleet["task_vars"])
    direct = run_action("drift_report", report_args(fleet, ["node1", "node2", "node3"], output_dir=str(tmp_path / "direct")), task_vars)
    assert merged["inputs"]["facts_from_store"]["records"] == 3 and merged["inputs"]["hosts_from_run"] == 0
    assert merged["summary"]["statuses"] == direct["summary"]["statuses"] and merged["fingerprint"] == direct["fingerprint"]


def test_check_mode_saves_no_facts_to_the_store(fleet: dict[str, t.Any]) -> None:
    saved = run_action("drift_report", report_args(fleet, ["node1"], save_facts_to_store="drift-7", report=False), with_facts(fleet),
                       check_mode=True)
    assert saved["facts_stored"]["hosts"] == 1
    missing = run_action("drift_report", report_args(fleet, [], facts_from_store="drift-7"), fleet["task_vars"])
    assert missing["failed"] is True and "facts set 'drift-7' holds no record" in missing["msg"], missing["msg"]


@pytest.mark.parametrize("name", ["", "-drift", "drift 7", "drift/7", "x" * 129])
def test_a_bad_facts_set_name_fails_before_any_store_is_opened(fleet: dict[str, t.Any], name: str) -> None:
    result = run_action("drift_report", report_args(fleet, ["node1"], save_facts_to_store=name, report=False), with_facts(fleet))
    if not name:
        assert "facts_stored" not in result and not result.get("failed")  # empty: not asked (the role's default)
    else:
        assert result["failed"] is True and "facts set name" in result["msg"], result
    assert not os.path.exists(os.path.join(fleet["state_dir"], "fleetpatch.db"))
