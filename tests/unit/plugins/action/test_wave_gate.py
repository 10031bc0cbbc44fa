"""fleetpatch.rollout.wave_gate: verdicts, the decision, the run state and the events of one batch."""

from __future__ import annotations

import json
import typing as t

import pytest
from ansible.errors import AnsibleActionFail

from conftest import run_action, run_args, stored_run


def gate_args(run: dict[str, t.Any], **changes: t.Any) -> dict[str, t.Any]:
    return {**run_args(run), "bake_seconds": 0, **changes}


def batch_vars(fleet: dict[str, t.Any], run: dict[str, t.Any], index: int, results: dict[str, t.Any]) -> dict[str, t.Any]:
    """task_vars of the gate after batch `index`: its hosts' apply results registered as __rollout_apply."""
    task_vars = json.loads(json.dumps(fleet["task_vars"]))
    hosts = run["plan"]["batches"][index]["hosts"]
    for host in hosts:
        if host in results:
            task_vars["hostvars"][host]["__rollout_apply"] = results[host]
    task_vars["ansible_play_batch"] = hosts
    return task_vars


def state(run: dict[str, t.Any]) -> dict[str, t.Any]:
    return stored_run(run)


def test_patched_canary_continues_and_is_recorded(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    canary = planned["plan"]["batches"][0]["hosts"][0]
    result = run_action("wave_gate", gate_args(planned), batch_vars(fleet, planned, 0, {canary: {"changed": True, "version": "1.0.1"}}))
    assert not result.get("failed"), result.get("msg")
    assert result["action"] == "continue" and result["stop"] is False and result["rollback_hosts"] == []
    recorded = state(planned)
    assert recorded["hosts"][canary]["outcome"] == "patched"
    assert recorded["completed_batches"] == [0]
    assert [decision["action"] for decision in recorded["decisions"]] == ["continue"]
    events = [event["event"] for event in result["fleetpatch_events"]]
    assert "host.outcome" in events and "gate.decision" in events


def test_failed_canary_halts_the_run(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    canary = planned["plan"]["batches"][0]["hosts"][0]
    result = run_action("wave_gate", gate_args(planned), batch_vars(fleet, planned, 0, {canary: {"failed": True, "msg": "disk full"}}))
    assert result["stop"] is True and result["action"] == "halt"
    recorded = state(planned)
    assert recorded["status"] == "halted" and recorded["halted"]["batch"] == 0
    assert recorded["hosts"][canary]["outcome"] == "failed" and "disk full" in recorded["hosts"][canary]["reason"]


def test_missing_result_counts_as_unreachable(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    result = run_action("wave_gate", gate_args(planned), batch_vars(fleet, planned, 0, {}))
    assert result["stop"] is True
    canary = planned["plan"]["batches"][0]["hosts"][0]
    assert state(planned)["hosts"][canary]["outcome"] == "unreachable"


def test_check_mode_decides_but_writes_no_state(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    before = state(planned)
    canary = planned["plan"]["batches"][0]["hosts"][0]
    result = run_action("wave_gate", gate_args(planned), batch_vars(fleet, planned, 0, {canary: {"changed": True}}), check_mode=True)
    assert result["action"] == "continue"
    assert state(planned) == before


def test_play_batch_that_is_no_plan_batch_is_an_error(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    task_vars = dict(fleet["task_vars"], ansible_play_batch=[host for batch in planned["plan"]["batches"] for host in batch["hosts"]])
    result = run_action("wave_gate", gate_args(planned), task_vars)
    assert result["failed"] and result["msg"] == "cannot tell which plan batch is running: play batch maps to batches [0, 1, 2]"


def test_run_is_required(fleet: dict[str, t.Any]) -> None:
    with pytest.raises(AnsibleActionFail, match="run"):
        run_action("wave_gate", {}, fleet["task_vars"])
