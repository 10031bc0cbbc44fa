"""The policy's command checks on the embedded demo fleet: taken inside each host's patch_apply execution (issue 19),
judged by the batch's gate.

Small fleets (one host per cell: 8 nodes) keep the file near a minute on an idle two-core machine.
"""

from __future__ import annotations

import functools
import sys
import typing as t
from pathlib import Path

import pytest

from .rollout_harness import RunResult

pytestmark = pytest.mark.integration

RUN_ID = "FP-DEMO-myapp-1.0.1"
CANARY_HOST = "eu-west-acme-api-prod-01"  # first eu-west host in plan order
CANARY_POLICY = {"canary": {"size": 1, "groups": ["region=eu-west"]}, "waves": ["100%"], "error_budget": 3}


@pytest.fixture
def make_fleet(make_fleet):
    """The shared factory (conftest.py) with one host per cell."""
    return functools.partial(make_fleet, demo_fleet_hosts_per_cell=1)


def tracing(trace: Path, *, exit_code: int = 0) -> dict[str, t.Any]:
    """A command check that appends a line to trace at every sample and exits with exit_code."""
    code = f"import sys; open({str(trace)!r}, 'a').write('sample\\n'); print('queue depth 0'); sys.exit({exit_code})"
    return {"name": "queue-drained", "kind": "command", "command": [sys.executable, "-c", code], "samples": 2, "stdout_regex": "^queue depth 0$"}


def gate_results(result: RunResult) -> list[dict[str, t.Any]]:
    found = []
    for event in result.events:
        data = event.get("event_data", {})
        if event.get("event") == "runner_on_ok" and str(data.get("task_action", "")).endswith("wave_gate"):
            found.append(data["res"])
    return found


def started_actions(result: RunResult) -> set[str]:
    return {str(event["event_data"].get("task_action")) for event in result.events if event.get("event") == "runner_on_start"}


def sample_lines(trace: Path) -> int:
    return len(trace.read_text().splitlines()) if trace.exists() else 0


def test_command_checks_run_inside_the_apply_and_pass_every_gate(make_fleet, tmp_path: Path) -> None:
    fleet = make_fleet()
    trace = tmp_path / "trace"
    result = fleet.rollout(policy=dict(CANARY_POLICY, checks=[tracing(trace)]))
    assert result.status == "successful", result.stdout[-3000:]

    nodes = fleet.nodes()
    assert all(fleet.current_version(host) == "1.0.1" for host in nodes)
    assert fleet.summary(RUN_ID)["status"] == "rolled_out"
    # one module execution per host: no command_checks task, and every apply result carries its samples
    assert "fleetpatch.rollout.command_checks" not in started_actions(result)
    applied = result.task_results("patch_apply")
    assert sorted(applied) == sorted(nodes)
    for host, outcome in applied.items():
        samples = outcome["command_checks"]["samples"]
        assert [(item["outcome"], item["reason"]) for item in samples["queue-drained"]] == [("ok", "")] * 2, host
    assert sample_lines(trace) == 2 * len(nodes)
    # every batch's gate judged the check on its hosts
    gates = gate_results(result)
    judged = [item for gate in gates for item in gate["checks"]["results"] if item["check"] == "queue-drained"]
    assert sorted(item["host"] for item in judged) == sorted(nodes)
    assert {item["status"] for item in judged} == {"pass"} and {gate["action"] for gate in gates} == {"continue"}


def test_a_failing_command_check_rolls_the_canary_back(make_fleet, tmp_path: Path) -> None:
    fleet = make_fleet()
    before = {host: fleet.host_manifest(host) for host in fleet.nodes()}
    trace = tmp_path / "trace"
    result = fleet.rollout(policy=dict(CANARY_POLICY, canary_response="rollback_wave", checks=[tracing(trace, exit_code=1)]))
    assert result.status == "failed", result.stdout[-3000:]

    assert fleet.current_version(CANARY_HOST) == "1.0.0"
    for host in fleet.nodes():
        if host != CANARY_HOST:
            assert fleet.host_manifest(host) == before[host], host
    assert sample_lines(trace) == 2  # the canary only; no other host was touched
    (gate,) = gate_results(result)
    assert (gate["wave"], gate["action"], gate["rollback_hosts"]) == ("canary", "rollback_wave", [CANARY_HOST])
    expected = f"check queue-drained on {CANARY_HOST}: fail: error_rate 1 > 0 (2 of 2 samples bad: exit code 1, expected 0)"
    assert f"{CANARY_HOST}: unhealthy: {expected}" in gate["decision"]["reasons"]
    summary = fleet.summary(RUN_ID)
    assert summary["status"] == "rolled_back" and summary["hosts"][CANARY_HOST]["outcome"] == "rolled_back"
