"""Benchmark: checking a 100-host wave with fleetpatch.rollout.synthetic_checks versus one ansible.builtin.uri task per host.

Both sides take the same samples (GET /version, N per host, status and JSON checked) from the same demo fleet through
ansible-playbook (ansible-runner) with the same configuration and forks. Runs are interleaved in one process; CPU seconds
are the children's rusage (ansible-playbook and every process it forks), wall time is measured around each run.

    .venv/bin/python bench/gate_bench.py [--samples 3] [--rounds 2] [--forks 20]
"""

from __future__ import annotations

import argparse
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

# 2 regions x 5 tenants x 5 segments x 2 hosts = 100 nodes
FLEET = {
    "demo_fleet_regions": ["eu-west", "us-east"],
    "demo_fleet_tenants": ["t1", "t2", "t3", "t4", "t5"],
    "demo_fleet_segments": ["s1", "s2", "s3", "s4", "s5"],
    "demo_fleet_hosts_per_cell": 2,
}
PLAYBOOKS = {"gate": "../bench/gate_checks.yml", "uri": "../bench/gate_uri.yml"}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(label: str, fleet: DemoFleet, extravars: dict, forks: int) -> dict:
    cpu0, wall0 = children_cpu(), time.monotonic()
    result = run_playbook(PLAYBOOKS[label], inventory=fleet.inventory, extravars=extravars, env={"ANSIBLE_FORKS": str(forks)})
    cpu, wall = children_cpu() - cpu0, time.monotonic() - wall0
    if result.status != "successful":
        raise SystemExit(f"{label} run failed:\n{result.stdout[-3000:]}")
    print(f"  {label:<5} wall={wall:7.2f}s cpu={cpu:7.2f}s", flush=True)
    return {"wall": wall, "cpu": cpu}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--forks", type=int, default=20)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {"gate": [], "uri": []}
    with tempfile.TemporaryDirectory(prefix="fleetpatch-gate-bench-") as base:
        fleet = DemoFleet(os.path.join(base, "fleet"), **FLEET)
        fleet.create()
        try:
            hosts = len(fleet.nodes())
            extravars = {"bench_samples": args.samples, "bench_correlation_id": "gate-bench"}
            print(f"{hosts} hosts, {args.samples} samples each, forks {args.forks}", flush=True)
            for round_index in range(args.rounds):
                order = ["uri", "gate"] if round_index % 2 == 0 else ["gate", "uri"]
                print(f"round {round_index + 1}", flush=True)
                for label in order:
                    results[label].append(measure(label, fleet, extravars, args.forks))
        finally:
            fleet.teardown()
    total = {label: {key: sum(run[key] for run in runs) for key in ("cpu", "wall")} for label, runs in results.items()}
    cpu_ratio = total["uri"]["cpu"] / total["gate"]["cpu"]
    wall_ratio = total["uri"]["wall"] / total["gate"]["wall"]
    summary = {"hosts": hosts, "samples": args.samples, "rounds": args.rounds, "forks": args.forks, "runs": results,
               "uri_over_gate_cpu": round(cpu_ratio, 2), "uri_over_gate_wall": round(wall_ratio, 2)}
    print(f"synthetic_checks is {cpu_ratio:.1f}x cheaper in CPU-seconds and {wall_ratio:.1f}x faster in wall time than"
          f" one uri task per host ({hosts} hosts x {args.samples} samples; goal >= 10x)")
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "gate_bench.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
