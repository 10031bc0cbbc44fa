"""fleetpatch.rollout.rollout_finish: the run's last status, the summary file, rollbacks and the lock."""

from __future__ import annotations

import json
import os
import typing as t

import pytest
from ansible.errors import AnsibleActionFail

from conftest import run_action, run_args, stored_lock, stored_run

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store import open_store


def finish_args(run: dict[str, t.Any], **changes: t.Any) -> dict[str, t.Any]:
    return {**run_args(run), **changes}


def read(path: str) -> dict[str, t.Any]:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def test_run_without_gate_is_interrupted_summary_written_lock_released(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    assert stored_lock(planned) is not None
    result = run_action("rollout_finish", finish_args(planned), fleet["task_vars"])
    assert not result.get("failed"), result.get("msg")
    assert result["status"] == "interrupted"
    summary = read(os.path.join(planned["run_dir"], "summary.json"))
    assert summary == result["summary"]
    assert summary["status"] == "interrupted" and summary["counts"] == {"untouched": 4} and summary["fleet_size"] == 4
    assert stored_run(planned)["status"] == "interrupted"
    assert stored_lock(planned) is None
    assert result["paths"]["summary"] == os.path.join(planned["run_dir"], "summary.json")
    assert [event["event"] for event in result["fleetpatch_events"]] == ["run.finished"]


def test_rollbacks_are_recorded_per_host(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    task_vars = json.loads(json.dumps(fleet["task_vars"]))
    task_vars["hostvars"]["node1"]["__rollout_rollback"] = {"changed": True, "version": "1.0.0"}
    task_vars["hostvars"]["node2"]["__rollout_rollback"] = {"failed": True, "msg": "no rollback point"}
    result = run_action("rollout_finish", finish_args(planned, rollback_hosts=["node1", "node2"]), task_vars)
    assert result["status"] == "rollback_failed"
    assert result["summary"]["rolled_back"] == ["node1"] and result["summary"]["rollback_failed"] == ["node2"]
    assert result["summary"]["hosts"]["node2"]["reason"] == "no rollback point"
    assert [event["event"] for event in result["fleetpatch_events"]] == ["rollback.host", "rollback.host", "rollback.finished", "run.finished"]


def test_preview_writes_nothing_and_names_no_file(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    result = run_action("rollout_finish", finish_args(dict(planned, preview=True)), fleet["task_vars"])
    assert result == {"changed": False, "status": "preview", "paths": {}, "check_mode": True}
    assert not os.path.exists(os.path.join(planned["run_dir"], "summary.json"))
    assert stored_lock(planned) is not None


def test_run_that_never_started(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    assert open_store(fleet["state_dir"]).forget_run(planned["run_id"]) is True
    result = run_action("rollout_finish", finish_args(planned), fleet["task_vars"])
    assert result["status"] == "not-started" and result["paths"]["run_dir"] == planned["run_dir"]


def test_rollback_hosts_must_be_a_list_of_names(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    with pytest.raises(AnsibleActionFail, match="rollback_hosts"):
        run_action("rollout_finish", finish_args(planned, rollback_hosts={"a": 1}), fleet["task_vars"])
