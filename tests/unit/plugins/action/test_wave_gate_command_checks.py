"""fleetpatch.rollout.wave_gate judges the command checks a host ran: from its apply result (patch_apply's command_checks
option), or from a command_checks task of its own (command_result_var)."""

from __future__ import annotations

import json
import typing as t

import pytest

from conftest import plan_args, run_action, run_args

CHECK = {"name": "queue-drained", "kind": "command", "command": ["queue-depth", "--max", "10"], "samples": 2}


def ok(count: int = 2) -> list[dict[str, t.Any]]:
    return [{"outcome": "ok", "latency_ms": 3.5, "reason": ""}] * count


@pytest.fixture
def planned(fleet: dict[str, t.Any], no_event_log: None) -> dict[str, t.Any]:
    """A run whose policy has one command check."""
    args = plan_args(fleet["state_dir"])
    args["policy"]["checks"] = [CHECK]
    result = run_action("rollout_plan", args, fleet["task_vars"])
    assert not result.get("failed"), result.get("msg")
    return result


def gate_on_canary(fleet: dict[str, t.Any], run: dict[str, t.Any], canary_vars: dict[str, t.Any]) -> tuple[str, dict[str, t.Any]]:
    """The canary batch's gate with these host variables on the canary."""
    canary = run["plan"]["batches"][0]["hosts"][0]
    task_vars = json.loads(json.dumps(fleet["task_vars"]))
    task_vars["hostvars"][canary].update(canary_vars)
    task_vars["ansible_play_batch"] = [canary]
    result = run_action("wave_gate", {**run_args(run), "bake_seconds": 0}, task_vars)
    assert not result.get("failed"), result.get("msg")
    return canary, result


def gate(fleet: dict[str, t.Any], run: dict[str, t.Any], canary_vars: dict[str, t.Any]) -> dict[str, t.Any]:
    return gate_on_canary(fleet, run, canary_vars)[1]


def check_result(result: dict[str, t.Any]) -> dict[str, t.Any]:
    (found,) = [item for item in result["checks"]["results"] if item["check"] == CHECK["name"]]
    return found


def test_samples_from_the_apply_result_pass(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    applied = {"changed": True, "version": "1.0.1", "command_checks": {"samples": {"queue-drained": ok()}}}
    canary, result = gate_on_canary(fleet, planned, {"__rollout_apply": applied})
    assert result["action"] == "continue", result["msg"]
    assert result["checks"]["status"] == "pass"
    assert check_result(result)["host"] == canary and check_result(result)["status"] == "pass"


def test_a_failing_sample_in_the_apply_result_makes_the_host_unhealthy(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    bad = [{"outcome": "error", "latency_ms": 4.0, "reason": "exit code 1, expected 0"}, *ok(1)]
    applied = {"changed": True, "version": "1.0.1", "command_checks": {"samples": {"queue-drained": bad}}}
    canary, result = gate_on_canary(fleet, planned, {"__rollout_apply": applied})
    assert result["stop"] is True and result["action"] == "halt"
    expected = f"check queue-drained on {canary}: fail: error_rate 0.5 > 0 (1 of 2 samples bad: exit code 1, expected 0)"
    assert f"{canary}: unhealthy: {expected}" in result["decision"]["reasons"]
    assert result["checks"]["host_failures"] == {canary: expected}


def test_the_apply_result_comes_before_a_command_checks_task(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    bad = [{"outcome": "error", "latency_ms": 4.0, "reason": "exit code 1, expected 0"}] * 2
    applied = {"changed": True, "version": "1.0.1", "command_checks": {"samples": {"queue-drained": ok()}}}
    result = gate(fleet, planned, {"__rollout_apply": applied, "__rollout_command_checks": {"samples": {"queue-drained": bad}}})
    assert result["action"] == "continue", result["msg"]


def test_a_command_checks_task_still_counts(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    """A playbook that runs fleetpatch.rollout.command_checks as its own task (the apply result has no command_checks)."""
    applied = {"changed": True, "version": "1.0.1"}
    result = gate(fleet, planned, {"__rollout_apply": applied, "__rollout_command_checks": {"changed": False, "samples": {"queue-drained": ok()}}})
    assert result["action"] == "continue" and result["checks"]["status"] == "pass", result["msg"]
    bad = [{"outcome": "error", "latency_ms": 4.0, "reason": "exit code 1, expected 0"}] * 2
    result = gate(fleet, planned, {"__rollout_apply": applied, "__rollout_command_checks": {"samples": {"queue-drained": bad}}})
    assert result["action"] == "halt", result["msg"]


def test_a_failed_command_checks_task_is_unavailable(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    applied = {"changed": True, "version": "1.0.1"}
    result = gate(fleet, planned, {"__rollout_apply": applied, "__rollout_command_checks": {"failed": True, "msg": "python not found"}})
    assert result["stop"] is True and result["action"] == "hold", result["msg"]
    assert result["checks"]["status"] == "inconclusive"
    assert "python not found" in json.dumps(check_result(result))


def test_no_samples_at_all_never_pass(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    result = gate(fleet, planned, {"__rollout_apply": {"changed": True, "version": "1.0.1"}})
    assert result["stop"] is True and result["action"] == "hold", result["msg"]
    assert result["checks"]["status"] == "inconclusive"
