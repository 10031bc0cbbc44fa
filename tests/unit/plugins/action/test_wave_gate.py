"""fleetpatch.rollout.wave_gate: verdicts, the decision, the run state and the events of one batch."""

from __future__ import annotations

import json
import typing as t

import pytest
from ansible.errors import AnsibleActionFail

from ansible_collections.fleetpatch.rollout.plugins.action.wave_gate import control_hosts
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._run import Run
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store import outcome_entry
from conftest import plan_args, run_action, run_args, stored_run


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


class RawHostVars(dict):
    """Like ansible-core's HostVars: raw_get gives a host's variables as stored; item access would template (and walk the
    whole plan result), which the per-batch actions must not do."""

    def raw_get(self, host: str) -> t.Any:
        return dict.__getitem__(self, host)

    def __getitem__(self, host: str) -> t.Any:
        if host == "localhost":
            raise AssertionError("the plan result was read through templating hostvars access")
        return dict.__getitem__(self, host)


def by_name(task_vars: dict[str, t.Any], run: dict[str, t.Any]) -> dict[str, t.Any]:
    """task_vars whose localhost holds the plan result as __rollout_plan, the role's registered variable."""
    return dict(task_vars, hostvars=RawHostVars(task_vars["hostvars"], localhost={"__rollout_plan": run}))


def test_plan_read_by_variable_name_decides_as_the_argument_does(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    canary = planned["plan"]["batches"][0]["hosts"][0]
    task_vars = by_name(batch_vars(fleet, planned, 0, {canary: {"changed": True, "version": "1.0.1"}}), planned)
    result = run_action("wave_gate", {"run_id": planned["run_id"], "bake_seconds": 0}, task_vars)
    assert not result.get("failed"), result.get("msg")
    assert (result["batch"], result["action"], result["stop"]) == (0, "continue", False)
    recorded = state(planned)
    assert recorded["hosts"][canary]["outcome"] == "patched" and recorded["completed_batches"] == [0]
    # the next batch fails: the same halt as with the plan passed as an argument, and the plan variable is unchanged
    hosts = planned["plan"]["batches"][1]["hosts"]
    before = json.dumps(planned, sort_keys=True)
    failing = by_name(batch_vars(fleet, planned, 1, {host: {"failed": True, "msg": "disk full"} for host in hosts}), planned)
    result = run_action("wave_gate", {"run_id": planned["run_id"], "bake_seconds": 0}, failing)
    assert (result["batch"], result["action"], result["stop"]) == (1, "halt", True)
    assert {host: state(planned)["hosts"][host]["outcome"] for host in hosts} == {host: "failed" for host in hosts}
    assert json.dumps(planned, sort_keys=True) == before


def test_no_plan_argument_and_no_plan_variable_is_an_error(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    result = run_action("wave_gate", {"run_id": planned["run_id"], "plan_var": "__elsewhere"}, by_name(batch_vars(fleet, planned, 0, {}), planned))
    assert result["failed"] and "plan_var, now '__elsewhere'" in result["msg"]


def test_rollback_all_reads_the_earlier_batches_outcomes(fleet: dict[str, t.Any], no_event_log: None) -> None:
    policy = {"canary": {"size": 1}, "waves": ["100%"], "max_concurrency": 2, "response": "rollback_all"}
    run = run_action("rollout_plan", plan_args(fleet["state_dir"], policy=policy), fleet["task_vars"])
    assert not run.get("failed"), run.get("msg")
    canary = run["plan"]["batches"][0]["hosts"][0]
    assert run_action("wave_gate", gate_args(run), batch_vars(fleet, run, 0, {canary: {"changed": True, "version": "1.0.1"}}))["action"] == "continue"
    first, *rest = run["plan"]["batches"][1]["hosts"]
    results = {first: {"changed": True, "version": "1.0.1"}, **{host: {"failed": True, "msg": "boom"} for host in rest}}
    result = run_action("wave_gate", gate_args(run), batch_vars(fleet, run, 1, results))
    assert result["action"] == "rollback_all" and result["stop"] is True
    # the canary of batch 0 was not loaded with batch 1: the gate read its outcome to roll it back too
    assert result["rollback_hosts"] == [canary, *run["plan"]["batches"][1]["hosts"]]


def test_control_hosts_are_the_next_untouched_hosts_in_plan_order_read_a_few_at_a_time(tmp_path: t.Any) -> None:
    hosts = [f"h{number:03d}" for number in range(200)]
    plan = {"batches": [{"index": index, "hosts": hosts[start:start + 20]} for index, start in enumerate(range(0, 200, 20))]}
    run = Run.open(state_dir=str(tmp_path), run_id="FP-1", patch_id="FP-1", fingerprint="f")
    run.start_attempt({"correlation_id": "c-1", "skip_hosts": ["h041"]}, fingerprint="f")
    run.save()
    # batches 0-1 done, and hosts 42-99 touched by an earlier attempt (more than one read of candidates)
    run.record_outcomes({host: outcome_entry("patched", at="t1") for host in hosts[:40] + hosts[42:100]})
    batch = Run.load(state_dir=str(tmp_path), run_id="FP-1", hosts=hosts[40:60])
    assert control_hosts(plan, batch, exclude=hosts[40:60], count=3, start=2) == ["h100", "h101", "h102"]
    assert control_hosts(plan, batch, exclude=["h040"], count=2, start=2) == ["h100", "h101"]
    assert control_hosts(plan, batch, exclude=[], count=2, start=2) == ["h040", "h100"]
    assert control_hosts(plan, batch, exclude=[], count=0, start=2) == [] and control_hosts(plan, batch, exclude=[], count=5, start=10) == []
