"""Benchmark: an AWX sliced job (3 concurrent slices on PostgreSQL) against one unsliced run (SQLite), same demo fleet.

Issue 17's figure is 200 demo hosts (``--hosts 200``, the default); on a loaded machine a smaller fleet (``--hosts 48``)
gives the same ratios faster. For each arm a fresh demo fleet of the same layout is built, then:

- unsliced: one ansible-playbook (through ansible-runner, as the tests run it) over the whole inventory, SQLite store;
- sliced: three ansible-runner jobs at once, each with an inventory of ``sorted(hosts)[i::3]`` (AWX's slicing), the
  same extra vars except ``awx_job_id`` and ``fleetpatch_slice_number``, one ``awx_workflow_job_id``, each its own
  empty state dir, one private PostgreSQL server (tests/harness/postgres.py).

Printed: wall seconds of each arm and their ratio (issue: sliced <= 0.5x unsliced); the run's CPU (every process the
runs started: ansible-playbook, its workers, the modules on the demo hosts; RUSAGE_CHILDREN); the coordination CPU
of the sliced run (joining, batch barriers, budget and halt checks, the finish barrier: CPU measured inside the
slice calls of plugin_utils/_slices, as the actions return it under ``slice.cpu_seconds``) as a share of the run's
CPU (issue: <= 5%); and the end state: every host's version equal in both arms.

    .venv/bin/python bench/slice_bench.py [--hosts 200] [--policy-waves 10%,50%,100%]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import resource
import sys
import tempfile
import time
import typing as t

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

import tests.conftest  # noqa: E402,F401  # pylint: disable=unused-import  # installs the collection loader
from tests.harness.postgres import PostgresServer  # noqa: E402
from tests.integration.rollout_harness import DemoFleet, RunResult, run_playbook  # noqa: E402

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store_sql import DSN_VAR  # noqa: E402

SLICES = 3
REGIONS = ["eu-west", "us-east", "ap-south", "sa-east"]
TENANTS = ["acme", "globex", "initech", "umbrella", "hooli"]
SEGMENTS = ["web", "api", "worker", "batch", "edge-svc"]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def layout(hosts: int) -> dict[str, t.Any]:
    """Demo fleet parameters for about `hosts` nodes: regions x 5 tenants x 5 segments x n."""
    if hosts < 100:
        return {"demo_fleet_regions": REGIONS[:max(1, hosts // 25)], "demo_fleet_tenants": TENANTS, "demo_fleet_segments": SEGMENTS,
                "demo_fleet_hosts_per_cell": 1}
    return {"demo_fleet_regions": REGIONS, "demo_fleet_tenants": TENANTS, "demo_fleet_segments": SEGMENTS,
            "demo_fleet_hosts_per_cell": max(1, hosts // 100)}


def slice_inventories(fleet: DemoFleet, directory: str) -> list[str]:
    with open(fleet.inventory, encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    names = sorted(config["hosts"])
    paths = []
    for number in range(1, SLICES + 1):
        path = os.path.join(directory, f"slice{number}.fleet.yml")
        with open(path, "w", encoding="utf-8") as handle:
            yaml.safe_dump(dict(config, hosts={name: config["hosts"][name] for name in names[number - 1::SLICES]}), handle)
        paths.append(path)
    return paths


def coordination_cpu(result: RunResult) -> float:
    """CPU seconds the slice calls of one slice's run took, from the results of its actions (every batch's)."""
    total = 0.0
    for event in result.events:
        data = event.get("event_data", {})
        if event.get("event") != "runner_on_ok":
            continue
        action, res = str(data.get("task_action", "")), data.get("res", {})
        if action.endswith("rollout_plan"):
            total += float((res.get("slice") or {}).get("cpu_seconds", 0))
        elif action.endswith(("change_window", "wave_gate")):
            total += float((res.get("slice") or {}).get("cpu_seconds", 0))
        elif action.endswith("rollout_finish"):
            total += float(((res.get("summary") or {}).get("slices") or {}).get("cpu_seconds", 0))
    return total


def unsliced(base: str, params: dict[str, t.Any], policy: dict[str, t.Any]) -> dict[str, t.Any]:
    fleet = DemoFleet(os.path.join(base, "unsliced"), **params)
    fleet.create()
    try:
        cpu, wall = children_cpu(), time.monotonic()
        result = fleet.rollout(policy=policy, fleetpatch_state_backend="sqlite")
        wall, cpu = time.monotonic() - wall, children_cpu() - cpu
        assert result.status == "successful", result.stdout[-3000:]
        return {"wall": wall, "cpu": cpu, "versions": fleet.versions(), "hosts": len(fleet.nodes())}
    finally:
        fleet.teardown()


def sliced(base: str, params: dict[str, t.Any], policy: dict[str, t.Any], dsn: str) -> dict[str, t.Any]:
    fleet = DemoFleet(os.path.join(base, "sliced"), **params)
    fleet.create()
    try:
        inventories = slice_inventories(fleet, os.path.join(base, "sliced"))

        def one(number: int) -> RunResult:
            extravars = {"rollout_patch_manifest": fleet.manifest(), "rollout_state_dir": os.path.join(base, f"slice{number}"),
                         "rollout_policy": fleet.trusting(policy), "fleetpatch_state_backend": "postgresql", "awx_job_id": 500 + number,
                         "awx_workflow_job_id": 500, "fleetpatch_slice_number": number, "fleetpatch_slice_count": SLICES}
            return run_playbook("rollout.yml", inventory=inventories[number - 1], extravars=extravars, env={DSN_VAR: dsn})

        cpu, wall = children_cpu(), time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=SLICES) as pool:
            results = list(pool.map(one, range(1, SLICES + 1)))
        wall, cpu = time.monotonic() - wall, children_cpu() - cpu
        for number, result in enumerate(results, start=1):
            assert result.status == "successful", f"slice {number}: " + result.stdout[-3000:]
        return {"wall": wall, "cpu": cpu, "coordination": sum(coordination_cpu(result) for result in results), "versions": fleet.versions(),
                "per_slice": [coordination_cpu(result) for result in results]}
    finally:
        fleet.teardown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--hosts", type=int, default=200, help="demo hosts (issue 17: 200)")
    parser.add_argument("--policy-waves", default="10%,50%,100%", help="the rollout policy's waves")
    args = parser.parse_args()
    params = layout(args.hosts)
    policy = {"canary": {"size": 1}, "waves": args.policy_waves.split(","), "response": "quarantine", "canary_response": "quarantine",
              "error_budget": 2}
    with tempfile.TemporaryDirectory(prefix="fleetpatch-slice-bench-") as base, PostgresServer() as server:
        one = unsliced(base, params, policy)
        three = sliced(base, params, policy, server.create_database("slice_bench"))
    same = one["versions"] == three["versions"] and set(one["versions"].values()) == {"1.0.1"}
    share = three["coordination"] / three["cpu"] if three["cpu"] else 0.0
    print(f"demo hosts: {one['hosts']} (layout {params['demo_fleet_hosts_per_cell']} per cell x {len(params['demo_fleet_regions'])} region(s)"
          f" x {len(TENANTS)} tenants x {len(SEGMENTS)} segments); policy waves {args.policy_waves}")
    print(f"end state: {'same on every host (1.0.1)' if same else 'DIFFERENT'}")
    print(f"unsliced (SQLite):          wall {one['wall']:7.1f} s   cpu {one['cpu']:7.1f} s")
    print(f"3 slices (PostgreSQL):      wall {three['wall']:7.1f} s   cpu {three['cpu']:7.1f} s")
    print(f"wall ratio sliced/unsliced: {three['wall'] / one['wall']:.2f}x (issue: <= 0.5x)")
    print(f"coordination cpu:           {three['coordination']:.2f} s = {share * 100:.2f}% of the sliced run's cpu (issue: <= 5%);"
          f" per slice {', '.join(f'{value:.2f}' for value in three['per_slice'])} s")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
