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
