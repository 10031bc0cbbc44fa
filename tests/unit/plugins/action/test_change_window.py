"""fleetpatch.rollout.change_window: may this batch start now? The answer, and the waiting state when it may not."""

from __future__ import annotations

import copy
import json
import os
import socket
import typing as t

from conftest import run_action, run_args, stored_run


def window_args(run: dict[str, t.Any], **changes: t.Any) -> dict[str, t.Any]:
    return {**run_args(run), "clock": "2026-03-11T05:00:00Z", **changes}


def batch(fleet: dict[str, t.Any], run: dict[str, t.Any], index: int) -> dict[str, t.Any]:
    return dict(fleet["task_vars"], ansible_play_batch=run["plan"]["batches"][index]["hosts"])


def frozen(run: dict[str, t.Any]) -> dict[str, t.Any]:
    """The run, with a freeze over the whole of March 2026 in its change calendar."""
    run = copy.deepcopy(run)
    run["change"]["calendar"] = dict(run["change"]["calendar"] or {},
                                     freezes=[{"name": "quarter close", "once": {"start": "2026-03-01T00:00", "end": "2026-04-01T00:00"}}])
    return run


def test_open_batch_may_start(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    result = run_action("change_window", window_args(planned), batch(fleet, planned, 1))
    assert not result.get("failed"), result.get("msg")
    assert (result["batch"], result["wave"], result["fits"], result["stop"]) == (1, "wave-1", True, False)
    assert result["clock"] == "2026-03-11T05:00:00Z" and result["clock_source"] == "rollout_clock"
    assert result["msg"].startswith("batch 1 (wave-1) may start at 2026-03-11T05:00:00Z")
    assert [event["event"] for event in result["fleetpatch_events"]] == ["window.checked"]


def test_frozen_batch_waits_and_the_run_records_it(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    result = run_action("change_window", window_args(frozen(planned)), batch(fleet, planned, 0))
    assert not result.get("failed"), result.get("msg")
    assert result["fits"] is False and result["stop"] is True and result["reasons"]
    assert "waits" in result["msg"] and "re-run the rollout then to resume" in result["msg"]
    state = stored_run(planned)
    assert state["status"] == "waiting_window"
    assert state["halted"]["action"] == "wait_window" and state["waiting"]["batch"] == 0


def test_check_mode_answers_without_writing(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    before = stored_run(planned)
    result = run_action("change_window", window_args(frozen(planned)), batch(fleet, planned, 0), check_mode=True)
    assert result["check_mode"] is True and result["fits"] is False and "fleetpatch_events" not in result
    assert stored_run(planned) == before


def test_run_without_change_policy_is_refused(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    run = dict(planned, change=None)
    result = run_action("change_window", window_args(run), batch(fleet, planned, 0))
    assert result["failed"] and result["msg"].startswith("plan has no plan or change policy")


def test_unknown_batch_is_an_error(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    result = run_action("change_window", window_args(planned), dict(fleet["task_vars"], ansible_play_batch=["nobody"]))
    assert result["failed"] and result["msg"] == "cannot tell which plan batch is starting: play batch maps to batches []"


def with_baseline_check(fleet: dict[str, t.Any], run: dict[str, t.Any], port: int) -> tuple[dict[str, t.Any], dict[str, t.Any]]:
    """The run, with a policy check that compares against a baseline (a TCP port on loopback), and task vars that reach it."""
    run = copy.deepcopy(run)
    run["plan"]["policy"]["checks"] = [{"name": "port", "kind": "tcp", "address": "${var.fleet_address}", "port": port, "samples": 1, "timeout": 1,
                                        "baseline": {"latency_ratio": 2}}]
    run["checks"] = dict(run.get("checks") or {}, baseline=True)
    task_vars = copy.deepcopy(batch(fleet, run, 1))
    for host_vars in task_vars["hostvars"].values():
        host_vars["fleet_address"] = "127.0.0.1"
    return run, task_vars


def test_an_open_batch_captures_its_pre_patch_baseline(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        run, task_vars = with_baseline_check(fleet, planned, server.getsockname()[1])
        result = run_action("change_window", window_args(run), task_vars)
    assert not result.get("failed"), result.get("msg")
    hosts = run["plan"]["batches"][1]["hosts"]
    assert result["baseline"]["status"] == "captured" and sorted(result["baseline"]["baseline"]) == sorted(hosts)
    assert result["baseline"]["path"] == os.path.join(planned["run_dir"], "baseline.json")
    with open(result["baseline"]["path"], encoding="utf-8") as handle:
        assert sorted(json.load(handle)["hosts"]) == sorted(hosts)
    assert [event["event"] for event in result["fleetpatch_events"]] == ["window.checked", "checks.baseline"]


def test_a_waiting_batch_and_check_mode_capture_no_baseline(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    run, task_vars = with_baseline_check(fleet, planned, 9)
    waiting = run_action("change_window", window_args(frozen(run)), task_vars)
    checked = run_action("change_window", window_args(run), task_vars, check_mode=True)
    assert waiting["stop"] is True and "baseline" not in waiting and "baseline" not in checked
    assert not os.path.exists(os.path.join(planned["run_dir"], "baseline.json"))


def eu_freeze(run: dict[str, t.Any]) -> dict[str, t.Any]:
    """The run, with a freeze over March 2026 for region eu only."""
    run = copy.deepcopy(run)
    run["change"]["calendar"] = dict(run["change"]["calendar"] or {}, freezes=[
        {"name": "eu close", "scope": {"region": ["eu"]}, "once": {"start": "2026-03-01T00:00", "end": "2026-04-01T00:00"}}])
    return run


def test_scopes_are_the_attributes_the_plan_read(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    # the hosts' variables are not read again per batch: the plan announced each host's region, tenant and environment
    hosts = planned["plan"]["batches"][1]["hosts"]
    task_vars = dict(batch(fleet, planned, 1), hostvars={host: {} for host in fleet["task_vars"]["hostvars"]})
    result = run_action("change_window", window_args(eu_freeze(planned)), task_vars)
    eu = [host for host in hosts if fleet["task_vars"]["hostvars"][host]["fleet_region"] == "eu"]
    assert eu and result["stop"] is True and sorted(result["blocked_hosts"]) == sorted(eu)


def test_a_host_the_plan_did_not_announce_is_read_from_hostvars(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    run = eu_freeze(planned)
    run["fleetpatch_run"] = dict(run["fleetpatch_run"], hosts={})
    hosts = planned["plan"]["batches"][1]["hosts"]
    result = run_action("change_window", window_args(run), batch(fleet, planned, 1))
    eu = [host for host in hosts if fleet["task_vars"]["hostvars"][host]["fleet_region"] == "eu"]
    assert result["stop"] is True and sorted(result["blocked_hosts"]) == sorted(eu)
