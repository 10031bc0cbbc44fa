"""Benchmark: what the policy's command checks cost per host in a rollout of the demo fleet (issue 19).

One fresh fleet per round: the floor (one ``ansible.builtin.ping`` per host, same batches) and a ``url`` rollout whose
policy has one command check (``true``, one sample), interleaved like ``bench/rollout_bench.py`` (whose fleet layout,
CPU meters and per-task breakdown this reuses). The rollout role runs command checks inside each host's
``patch_apply`` execution; before issue 19 they were a ``command_checks`` task of their own (a second module execution
per host), which the per-task breakdown shows when this file is run on an older checkout.

    .venv/bin/python bench/command_checks_bench.py [--hosts 50] [--rounds 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import typing as t

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import rollout_bench  # noqa: E402  # pylint: disable=wrong-import-position

from tests.integration.rollout_harness import DemoFleet  # noqa: E402  # pylint: disable=wrong-import-position

CHECK = {"name": "queue-drained", "kind": "command", "command": ["true"], "samples": 1}
POLICY = dict(rollout_bench.POLICY, checks=[CHECK])


def one_round(base: str, hosts_wanted: int, round_index: int) -> dict[str, t.Any]:
    fleet = DemoFleet(os.path.join(base, f"checks-{hosts_wanted}-{round_index}"), **rollout_bench.layout(hosts_wanted))
    fleet.create()
    try:
        nodes = fleet.nodes()
        preview = fleet.rollout(policy=POLICY, rollout_preview=True)
        serial = next(e["event_data"]["res"] for e in preview.events
                      if e.get("event") == "runner_on_ok" and str(e["event_data"].get("task_action", "")).endswith("rollout_plan"))["serial"]
        arms: dict[str, t.Callable[[], dict[str, t.Any]]] = {
            "floor": lambda: rollout_bench.measure("floor (ping)", "../bench/floor_rollout.yml", inventory=fleet.inventory,
                                                   extravars={"floor_serial": serial}, hosts=len(nodes)),
            "fleetpatch": lambda: rollout_bench.measure("fleetpatch url+checks", "rollout.yml", inventory=fleet.inventory, hosts=len(nodes),
                                                        extravars={"rollout_patch_manifest": fleet.manifest(), "rollout_state_dir": fleet.state_dir,
                                                                   "rollout_policy": fleet.trusting(POLICY), "rollout_stage": "url"}),
        }
        order = list(arms) if round_index % 2 == 0 else list(reversed(arms))
        results = {name: arms[name]() for name in order}
        if sorted(set(fleet.versions().values())) != ["1.0.1"]:
            raise SystemExit("hosts did not all end on 1.0.1")
        return {"hosts": len(nodes), **results}
    finally:
        fleet.teardown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=1)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleetpatch-bench-") as base:
        results = [one_round(base, options.hosts, index) for index in range(options.rounds)]
    hosts = sum(result["hosts"] for result in results)
    for arm in ("floor", "fleetpatch"):
        print(f"  {arm:<11} CPU {sum(r[arm]['cpu'] for r in results) / hosts:.3f} s/host")
    print(f"  fleetpatch / floor CPU {rollout_bench.ratio(results, 'fleetpatch', 'cpu'):.2f}x")
    print("  the apply and command check tasks (CPU seconds, hosts that ran them):")
    for row in results[-1]["fleetpatch"]["tasks"]:
        if any(word in row["task"] for word in ("command checks", "Stage, verify", "Apply the patch")):
            print(f"    {row['cpu']:8.2f} {row['hosts']:5d}  {row['task']}")


if __name__ == "__main__":
    main()
