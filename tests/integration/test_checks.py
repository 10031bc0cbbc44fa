"""Synthetic checks, wave gates and automated rollback on the embedded demo fleet (issue 4).

Small fleets (one host per cell: 8 nodes) and short windows keep the whole file near two minutes on an idle
two-core machine. The metric test runs Debian's real Prometheus on 127.0.0.1, scraping the demo hosts.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import typing as t
import urllib.request

import pytest
import yaml

from .rollout_harness import DemoFleet, RunResult, tree_snapshot

pytestmark = pytest.mark.integration

RUN_ID = "FP-DEMO-myapp-1.0.1"
CANARY_HOST = "eu-west-acme-api-prod-01"  # first eu-west host in plan order
ADDRESS = "http://${var.fleet_address}:${var.fleet_port}"
JOURNEY = {
    "name": "login-and-list",
    "samples": 3,
    "steps": [
        {"name": "login", "method": "POST", "url": f"{ADDRESS}/login", "json": {"user": "synthetic"}, "capture": {"token": "token"}},
        {"name": "items", "url": f"{ADDRESS}/api/items", "headers": {"Authorization": "Bearer ${capture.token}"},
         "expect": {"status": 200, "json": ["length(items) > `0`", {"query": "version", "exists": True}]}},
    ],
}
CANARY_POLICY = {"canary": {"size": 1, "groups": ["region=eu-west"]}, "waves": ["100%"], "error_budget": 3}


@pytest.fixture
def make_fleet(make_fleet):
    """The shared factory (conftest.py) with one host per cell: the small fleets this file is timed for."""
    return functools.partial(make_fleet, demo_fleet_hosts_per_cell=1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def prometheus(tmp_path):
    """Start Debian's Prometheus on 127.0.0.1, scraping every node of a demo fleet each second; stopped afterwards."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the prometheus binary is not installed (Debian package 'prometheus'; bin/test installs it as root)")
    processes: list[subprocess.Popen] = []

    def start(fleet: DemoFleet) -> str:
        hosts = fleet.inventory_hosts()
        targets = [f"{hosts[host]['fleet_address']}:{hosts[host]['fleet_port']}" for host in fleet.nodes()]
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "fleet", "metrics_path": "/metrics", "params": {"format": ["prometheus"]},
                                "static_configs": [{"targets": targets}]}],
        }
        config_path = tmp_path / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        url = f"http://127.0.0.1:{free_port()}"
        log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(  # noqa: S603 - fixed argv
            [binary, f"--config.file={config_path}", f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address={url[7:]}",
             "--storage.tsdb.retention.time=1h", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        processes.append(process)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # ready once every target has been scraped
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"{url}/api/v1/query?query=count(fleet_service_up)", timeout=2) as response:
                    result = json.load(response)["data"]["result"]
                if result and int(float(result[0]["value"][1])) == len(targets):
                    return url
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError("prometheus did not scrape every demo host within 60 s")

    yield start
    for process in processes:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def gate_results(result: RunResult) -> list[dict[str, t.Any]]:
    """Every wave_gate result of the run, in order (one per batch)."""
    found = []
    for event in result.events:
        data = event.get("event_data", {})
        if event.get("event") == "runner_on_ok" and str(data.get("task_action", "")).endswith("wave_gate"):
            found.append(data["res"])
    return found


def logged_decisions(fleet: DemoFleet) -> list[dict[str, t.Any]]:
    """gate.decision lines of the event log, with their data merged in (the log nests event fields under data)."""
    decisions = []
    for event in fleet.events(RUN_ID):
        if event.get("event") == "gate.decision":
            decisions.append({**event, **(event.get("data") or {})})
    return decisions


def state(fleet: DemoFleet) -> dict[str, t.Any]:
    """The run as its store holds it (read while the rollout runs too: every write is one transaction)."""
    return fleet.run_state(RUN_ID)


def untouched(fleet: DemoFleet, before: dict[str, t.Any], *, but: t.Collection[str]) -> None:
    for host in fleet.nodes():
        if host not in but:
            assert fleet.host_manifest(host) == before[host], host
            assert fleet.releases(host) == ["1.0.0"], host


def test_version_returning_errors_fails_the_canary_and_only_the_canary_is_rolled_back(make_fleet) -> None:
    fleet = make_fleet(demo_fleet_faults=[{"kind": "error_rate", "percent": 100, "version": "1.0.1", "match": {"host": CANARY_HOST}}])
    before = {host: fleet.host_manifest(host) for host in fleet.nodes()}
    result = fleet.rollout(policy=dict(CANARY_POLICY, canary_response="rollback_wave", checks=[JOURNEY]))
    assert result.status == "failed", result.stdout[-3000:]

    assert fleet.current_version(CANARY_HOST) == "1.0.0"
    assert fleet.health(CANARY_HOST)["version"] == "1.0.0"
    untouched(fleet, before, but=[CANARY_HOST])
    summary = fleet.summary(RUN_ID)
    assert summary["status"] == "rolled_back"
    assert summary["hosts"][CANARY_HOST]["outcome"] == "rolled_back"
    assert len(summary["untouched"]) == len(fleet.nodes()) - 1

    (gate,) = gate_results(result)
    assert (gate["wave"], gate["action"], gate["rollback_hosts"]) == ("canary", "rollback_wave", [CANARY_HOST])
    expected = (f"check login-and-list on {CANARY_HOST}: fail: error_rate 1 > 0 (3 of 3 samples bad: items: HTTP 500, expected 200)")
    assert f"{CANARY_HOST}: unhealthy: {expected}" in gate["decision"]["reasons"]
    fired = [item for item in gate["checks"]["fired"] if item["name"] == "error_rate"]
    assert fired == [{"condition": "error_rate <= 0", "name": "error_rate", "op": "<=", "measured": 1.0, "threshold": 0, "status": "fail",
                      "check": "login-and-list", "host": CANARY_HOST, "result": "fail"}]
    assert summary["halted"]["reasons"] == gate["decision"]["reasons"]
    for decision in logged_decisions(fleet):  # the event log carries the same decision with the measured values
        assert decision["action"] == "rollback_wave" and decision["checks"]["fired"][0]["measured"] == 1.0


def test_slow_version_fails_the_baseline_comparison(make_fleet) -> None:
    fleet = make_fleet(demo_fleet_faults=[{"kind": "slow", "delay_ms": 400, "version": "1.0.1", "match": {"host": CANARY_HOST}}])
    before = {host: fleet.host_manifest(host) for host in fleet.nodes()}
    check = {"name": "version", "url": f"{ADDRESS}/version", "samples": 3, "expect": {"json": [{"query": "version", "exists": True}]},
             "baseline": {"latency_ratio": 1.5, "min_delta_ms": 150, "control_hosts": 2}}
    result = fleet.rollout(policy=dict(CANARY_POLICY, canary_response="halt", checks=[check]))
    assert result.status == "failed", result.stdout[-3000:]

    assert fleet.current_version(CANARY_HOST) == "1.0.1"  # halt leaves the canary as it is
    untouched(fleet, before, but=[CANARY_HOST])
    summary = fleet.summary(RUN_ID)
    assert summary["status"] == "halted"
    (gate,) = gate_results(result)
    assert gate["action"] == "halt"
    fired = {item["name"]: item for item in gate["checks"]["fired"]}
    assert set(fired) == {"baseline.p95", "control.p95"}
    baseline = fired["baseline.p95"]
    assert baseline["measured"] >= 400 and baseline["reference"] < 150
    assert baseline["threshold"] == round(max(baseline["reference"] * 1.5, baseline["reference"] + 150), 3)
    assert fired["control.p95"]["hosts"] == [host for host in json.loads(open(os.path.join(fleet.run_dir(RUN_ID), "plan.json")).read())["host_order"]
                                             if host != CANARY_HOST][:2]
    assert any(f"check version on {CANARY_HOST}: fail: baseline.p95" in reason for reason in summary["halted"]["reasons"])
    # the pre-patch baseline was captured on the canary before it was touched, and kept with the run
    with open(os.path.join(fleet.run_dir(RUN_ID), "baseline.json"), encoding="utf-8") as handle:
        stored = json.load(handle)["hosts"]
    assert list(stored) == [CANARY_HOST] and len(stored[CANARY_HOST]["version"]["samples"]) == 3
    # every request carried the run's correlation id
    correlation_id = state(fleet)["attempts"][-1]["correlation_id"]
    with urllib.request.urlopen(fleet.inventory_hosts()[CANARY_HOST]["fleetpatch_metrics_url"], timeout=5) as response:
        assert json.load(response)["correlation_ids"].get(correlation_id, 0) >= 3


def test_check_without_data_holds_instead_of_passing(make_fleet, prometheus) -> None:
    fleet = make_fleet()
    url = prometheus(fleet)
    before = {host: fleet.host_manifest(host) for host in fleet.nodes()}
    checks = [
        # A scrape during the canary's restart reads 0 until the next scrape (every second): wait two scrape intervals.
        {"name": "service-up", "kind": "prometheus", "url": url, "query": 'min(fleet_service_up{host=~"${hosts_regex}"})', "condition": {"min": 1},
         "initial_delay": 2},
        {"name": "checkout-success", "kind": "prometheus", "url": url, "samples": 2, "interval": 0.5,
         "query": 'myapp_checkout_success_ratio{host=~"${hosts_regex}"}', "condition": {"min": 0.99}},
    ]
    result = fleet.rollout(policy=dict(CANARY_POLICY, canary_response="rollback_wave", checks=checks))
    assert result.status == "failed", result.stdout[-3000:]  # rollout_fail_on_halt: a held rollout fails the job

    assert fleet.current_version(CANARY_HOST) == "1.0.1"
    untouched(fleet, before, but=[CANARY_HOST])
    assert fleet.summary(RUN_ID)["status"] == "held"
    (gate,) = gate_results(result)
    assert gate["action"] == "hold" and gate["rollback_hosts"] == []
    results = {item["check"]: item for item in gate["checks"]["results"]}
    assert results["service-up"]["status"] == "pass" and results["service-up"]["values"] == [1.0] * 3
    assert results["checkout-success"]["status"] == "inconclusive"
    assert gate["decision"]["reasons"][0] == (
        "canary: inconclusive, no pass without data: check checkout-success: inconclusive: no data (2 samples, none measured)"
    )


def _inject_when_stabilizing(fleet: DemoFleet, host: str, done: threading.Event, seen: dict[str, t.Any]) -> None:
    """Once the window opens, make host answer errors on /api (faults.json plus a reload, like the demo role does)."""
    while not done.is_set():
        window = state(fleet).get("stabilization")
        if window:
            seen["window"] = window
            path = os.path.join(fleet.path, "faults.json")
            with open(path, encoding="utf-8") as handle:
                faults = json.load(handle)
            faults["hosts"][host] = {"error_rate": {"percent": 100}}
            with open(path + ".tmp", "w", encoding="utf-8") as handle:
                json.dump(faults, handle)
            os.replace(path + ".tmp", path)
            subprocess.run([sys.executable, os.path.join(fleet.path, "bin", "fleetctl.py"), "reload-faults"], check=True, capture_output=True)
            seen["injected"] = time.monotonic()
            return
        time.sleep(0.05)


def test_breach_during_stabilization_rolls_everything_back(make_fleet) -> None:
    fleet = make_fleet()
    nodes = fleet.nodes()
    victim = nodes[-1]
    done, seen = threading.Event(), {}
    watcher = threading.Thread(target=_inject_when_stabilizing, args=(fleet, victim, done, seen), daemon=True)
    watcher.start()
    policy = dict(CANARY_POLICY, response="rollback_wave", checks=[dict(JOURNEY, samples=2)],
                  stabilization={"seconds": 20, "interval": 0.5})
    try:
        result = fleet.rollout(policy=policy)
    finally:
        done.set()
        watcher.join(timeout=5)
    assert result.status == "failed", result.stdout[-3000:]
    assert "injected" in seen and seen["window"]["hosts"] == state(fleet)["stabilization"]["hosts"]

    gates = gate_results(result)
    assert [gate["action"] for gate in gates[:-1]] == ["continue"] * (len(gates) - 1)  # every wave passed its own gate
    last = gates[-1]
    assert last["action"] == "rollback_all" and sorted(last["rollback_hosts"]) == nodes
    assert 1 <= last["stabilization"]["rounds"] and last["stabilization"]["elapsed"] < 20
    assert last["decision"]["reasons"][0].startswith("stabilization: ")
    assert any(reason.startswith(f"{victim}: unhealthy: check login-and-list on {victim}: fail: error_rate") for reason in last["decision"]["reasons"])
    for host in nodes:
        assert fleet.current_version(host) == "1.0.0", host
        assert fleet.health(host)["version"] == "1.0.0", host
    summary = fleet.summary(RUN_ID)
    assert summary["status"] == "rolled_back"
    assert summary["counts"]["rolled_back"] == len(nodes)
    assert summary["halted"]["wave"] == "stabilization"
    assert [decision["wave"] for decision in state(fleet)["decisions"]][-1] == "stabilization"
    events = fleet.events(RUN_ID)
    assert [event["data"]["hosts"] for event in events if event["event"] == "stabilization.started"] == [seen["window"]["hosts"]]
    (logged,) = [decision for decision in logged_decisions(fleet) if decision["wave"] == "stabilization"]
    assert logged["action"] == "rollback_all" and logged["stabilization"]["rounds"] == last["stabilization"]["rounds"]
    assert any(item["host"] == victim and item["name"] == "error_rate" for item in logged["checks"]["fired"])


MISCONFIGURED = [
    (dict(JOURNEY, steps=[JOURNEY["steps"][0], dict(JOURNEY["steps"][1], expect={"json": ["items[?price > `1`"]})]),
     "policy.checks[0] (login-and-list).steps[1].expect.json[0]: invalid JMESPath expression 'items[?price > `1`': "
     "incomplete expression at column 18"),
    ({"name": "version", "url": "http://${var.fleet_adress}:${var.fleet_port}/version"},
     "policy.checks[0] (version).steps[0].url: 'http://${var.fleet_adress}:${var.fleet_port}/version' for host"
     " 'eu-west-acme-api-prod-01': host variable 'fleet_adress' is not defined"),
    ({"name": "version", "url": "http://${var.fleet_address}:${var.fleet_role}/version"},
     "policy.checks[0] (version).steps[0].url: 'http://${var.fleet_address}:${var.fleet_role}/version' renders to"
     " 'http://127."),
]


def test_misconfigured_check_is_an_error_before_any_host_is_touched(make_fleet) -> None:
    fleet = make_fleet()
    before = tree_snapshot(os.path.join(fleet.path, "hosts"))
    for check, message in MISCONFIGURED:  # bad JMESPath, a URL template that cannot be filled, one that is no URL
        result = fleet.rollout(policy=dict(CANARY_POLICY, checks=[check]))
        assert result.status == "failed"
        assert message in result.stdout, result.stdout[-2000:]
    assert "for host 'eu-west-acme-api-prod-01': not a valid URL (Port could not be cast to integer value as 'node')" in result.stdout
    assert tree_snapshot(os.path.join(fleet.path, "hosts")) == before
    assert not os.path.exists(os.path.join(fleet.state_dir, "runs"))
