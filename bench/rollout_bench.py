"""Benchmark: fleetpatch's rollout against a hand-written builtin-module playbook on the same demo fleet.

Both run the same per-host work (stage artifact, unpack, switch, restart, health) under the same batch sizes
(taken from fleetpatch's plan). Runs are interleaved in one process; CPU seconds are the children's rusage
(ansible-playbook and every module process it forks), wall time is measured around each run.

    .venv/bin/python bench/rollout_bench.py [--hosts-per-cell 2] [--rounds 1]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

import tests.conftest  # noqa: E402,F401  # pylint: disable=unused-import  # installs the collection loader
from tests.integration.rollout_harness import DemoFleet, run_playbook  # noqa: E402

POLICY = {"canary": {"size": 1}, "waves": ["10%", "40%", "100%"], "max_concurrency": 20, "error_budget": "5%"}
MODULE_ACTIONS = {"patch_apply", "copy", "file", "unarchive", "command", "uri"}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(label: str, func) -> dict:
    cpu0, wall0 = children_cpu(), time.monotonic()
    result = func()
    cpu, wall = children_cpu() - cpu0, time.monotonic() - wall0
    per_host: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for event in result.events:
        data = event.get("event_data", {})
        if event.get("event") in ("runner_on_ok", "runner_on_failed"):
            action = str(data.get("task_action", "")).rsplit(".", 1)[-1]
            if action in MODULE_ACTIONS and data.get("host") != "localhost":
                per_host[data["host"]][action] += 1
    hosts = len(per_host) or 1
    module_tasks = sum(sum(c.values()) for c in per_host.values()) / hosts
    print(f"  {label:<10} status={result.status:<10} wall={wall:7.1f}s cpu={cpu:7.1f}s module tasks/host={module_tasks:.1f}", flush=True)
    return {"status": result.status, "wall": wall, "cpu": cpu, "module_tasks_per_host": module_tasks, "hosts": len(per_host)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts-per-cell", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    params = {"demo_fleet_regions": ["eu-west", "us-east", "ap-south", "sa-east"],
              "demo_fleet_tenants": ["t1", "t2", "t3", "t4", "t5"],
              "demo_fleet_segments": ["web", "api", "worker", "batch", "cron"],
              "demo_fleet_hosts_per_cell": args.hosts_per_cell}
    results: dict[str, list[dict]] = {"fleetpatch": [], "baseline": []}
    with tempfile.TemporaryDirectory(prefix="fleetpatch-bench-") as base:
        for round_index in range(args.rounds):
            order = ["baseline", "fleetpatch"] if round_index % 2 == 0 else ["fleetpatch", "baseline"]
            for which in order:
                fleet = DemoFleet(os.path.join(base, f"{which}-{round_index}"), **params)
                fleet.create()
                try:
                    nodes = fleet.nodes()
                    preview = fleet.rollout(policy=POLICY, rollout_preview=True)
                    plan = next(e["event_data"]["res"] for e in preview.events
                                if e.get("event") == "runner_on_ok" and str(e["event_data"].get("task_action", "")).endswith("rollout_plan"))
                    serial = plan["serial"]
                    print(f"round {round_index + 1}: {len(nodes)} hosts, {len(serial)} batches {serial}", flush=True)
                    if which == "fleetpatch":
                        res = measure(which, lambda: fleet.rollout(policy=POLICY, rollout_stage="copy"))
                    else:
                        res = measure(which, lambda: run_playbook("../bench/baseline_rollout.yml", inventory=fleet.inventory,
                                                                  extravars={"baseline_manifest": fleet.manifest(), "baseline_serial": serial}))
                    versions = set(fleet.versions().values()) if which == "fleetpatch" else {
                        fleet.current_version(host) for host in nodes}
                    res["versions"] = sorted(versions)
                    results[which].append(res)
                finally:
                    fleet.teardown()
    ours = results["fleetpatch"]
    base = results["baseline"]
    cpu_ratio = sum(r["cpu"] for r in ours) / sum(r["cpu"] for r in base)
    wall_ratio = sum(r["wall"] for r in ours) / sum(r["wall"] for r in base)
    summary = {
        "hosts": ours[0]["hosts"],
        "rounds": args.rounds,
        "fleetpatch": ours,
        "baseline": base,
        "cpu_ratio": round(cpu_ratio, 3),
        "wall_ratio": round(wall_ratio, 3),
    }
    print(json.dumps({k: v for k, v in summary.items() if k in ("hosts", "rounds", "cpu_ratio", "wall_ratio")}))
    print(f"fleetpatch/baseline: CPU {cpu_ratio:.2f}x, wall {wall_ratio:.2f}x (goal <= 1.0); module tasks per host:"
          f" fleetpatch {ours[0]['module_tasks_per_host']:.1f}, baseline {base[0]['module_tasks_per_host']:.1f}")
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "rollout_bench.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
