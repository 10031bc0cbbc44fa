"""fleetpatch.rollout.synthetic_checks: checks over many hosts from the controller, and the pre-patch baseline."""

from __future__ import annotations

import json
import os
import socket
import typing as t

import pytest

from conftest import run_action, run_args


@pytest.fixture
def listening() -> t.Iterator[int]:
    """A TCP port on loopback that accepts connections."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    yield server.getsockname()[1]
    server.close()


@pytest.fixture
def closed_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


def tcp_check(port: int, **changes: t.Any) -> dict[str, t.Any]:
    return {"name": "port", "kind": "tcp", "address": "${var.fleet_address}", "port": port, "samples": 1, "timeout": 1, **changes}


def checks_args(hosts: list[str], run: dict[str, t.Any] | None = None, **changes: t.Any) -> dict[str, t.Any]:
    return {"hosts": hosts, **(run_args(run) if run is not None else {}), "correlation_id": "corr-unit", **changes}


def with_address(fleet: dict[str, t.Any]) -> dict[str, t.Any]:
    task_vars = json.loads(json.dumps(fleet["task_vars"]))
    for host_vars in task_vars["hostvars"].values():
        host_vars["fleet_address"] = "127.0.0.1"
    return task_vars


def test_passing_checks(fleet: dict[str, t.Any], listening: int) -> None:
    result = run_action("synthetic_checks", checks_args(["node1", "node2"], checks=[tcp_check(listening)]), with_address(fleet))
    assert not result.get("failed"), result.get("msg")
    assert result["status"] == "pass" and result["correlation_id"] == "corr-unit"
    assert sorted(item["host"] for item in result["results"]) == ["node1", "node2"]
    assert result["msg"] == "2 check result(s): pass"


def test_failing_check_fails_the_task_unless_told_not_to(fleet: dict[str, t.Any], closed_port: int) -> None:
    args = checks_args(["node1"], checks=[tcp_check(closed_port)])
    failed = run_action("synthetic_checks", args, with_address(fleet))
    assert failed["failed"] is True and failed["status"] == "fail" and failed["msg"].startswith("1 check result(s): fail: ")
    tolerated = run_action("synthetic_checks", dict(args, fail_on="never"), with_address(fleet))
    assert tolerated["failed"] is False and tolerated["status"] == "fail"


def test_missing_host_variable_is_an_error_before_any_probe(fleet: dict[str, t.Any], listening: int) -> None:
    result = run_action("synthetic_checks", checks_args(["node1"], checks=[tcp_check(listening)]), fleet["task_vars"])
    assert result["failed"] and "fleet_address" in result["msg"]


def test_checks_or_run_is_required(fleet: dict[str, t.Any]) -> None:
    result = run_action("synthetic_checks", checks_args(["node1"]), fleet["task_vars"])
    assert result == {"failed": True, "msg": "give checks, or run_id and plan (the registered result of fleetpatch.rollout.rollout_plan) to use its"
                                             " policy's checks"}


def test_baseline_needs_a_run(fleet: dict[str, t.Any], listening: int) -> None:
    result = run_action("synthetic_checks", checks_args(["node1"], checks=[tcp_check(listening)], baseline=True), with_address(fleet))
    assert result == {"failed": True, "msg": "baseline=true needs run_id and plan: the baseline is kept with the rollout run"}


def test_baseline_is_kept_with_the_run(fleet: dict[str, t.Any], planned: dict[str, t.Any], listening: int) -> None:
    checks = [tcp_check(listening, baseline={"latency_ratio": 2})]
    result = run_action("synthetic_checks", checks_args(["node1", "node2"], planned, checks=checks, baseline=True), with_address(fleet))
    assert not result.get("failed"), result.get("msg")
    assert result["status"] == "captured" and sorted(result["baseline"]) == ["node1", "node2"] and result["kept"] == []
    assert result["path"] == os.path.join(planned["run_dir"], "baseline.json")
    with open(result["path"], encoding="utf-8") as handle:
        assert sorted(json.load(handle)["hosts"]) == ["node1", "node2"]
    assert [event["event"] for event in result["fleetpatch_events"]] == ["checks.baseline"]


def test_check_mode_runs_no_check(fleet: dict[str, t.Any], closed_port: int) -> None:
    result = run_action("synthetic_checks", checks_args(["node1"], checks=[tcp_check(closed_port)]), with_address(fleet), check_mode=True)
    assert result == {"changed": False, "skipped": True, "status": "skipped", "results": [], "msg": "check mode: no check was run"}
