"""Benchmark: what a fleetpatch rollout costs per host against the floor (touch every host once) on the demo fleet.

Arms, interleaved in one process so load on the machine hits both alike:

* floor: ``bench/floor_rollout.yml``, one ``ansible.builtin.ping`` per host, same inventory, same batch sizes (the
  plan's ``serial``), run before and after the other arms and counted as the mean of the two (drift on the machine
  during a round hits the floor as it hits the rollout);
* fleetpatch: ``playbooks/rollout.yml`` with ``rollout_stage`` = ``copy``, ``url`` or ``prestaged`` (the prestaged
  arm's fleet is pre-staged by ``playbooks/prestage.yml`` first, outside the measurement);
* baseline (``--baseline``): the older hand-written builtin-module playbook ``bench/baseline_rollout.yml``.

CPU seconds are the children's rusage (ansible-playbook and every process it forks); wall time is measured around
each run. The per-task breakdown samples the CPU of the ansible-playbook process (its own, its reaped children's and
its live descendants', from /proc) at every task start seen in the runner's event stream, so each task is charged
the CPU spent until the next task starts; "host" tasks run a module on the managed host, "controller" ones do not.

The cost curve runs the copy stage and the floor at every size of ``--sizes`` (CPU per host should stay flat).

    .venv/bin/python bench/rollout_bench.py [--stage-size 50] [--stages copy,url,prestaged] [--sizes 50,100]
                                            [--rounds 1] [--baseline]
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
import typing as t

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

import ansible_runner  # noqa: E402

import tests.conftest  # noqa: E402,F401  # pylint: disable=unused-import  # installs the collection loader
from tests.integration.rollout_harness import PLAYBOOKS, DemoFleet, envvars, run_playbook  # noqa: E402

POLICY = {"canary": {"size": 1}, "waves": ["10%", "40%", "100%"], "max_concurrency": 20, "error_budget": "5%"}
STAGES = ("copy", "url", "prestaged")
# fleet layouts by size: regions x tenants x segments x hosts per cell
REGIONS = ["eu-west", "us-east", "ap-south", "sa-east"]
TENANTS = ["t1", "t2", "t3", "t4", "t5"]
SEGMENTS = ["web", "api", "worker", "batch", "cron"]
# actions that never run a module on the managed host (controller-side action plugins, meta and bookkeeping)
CONTROLLER_ACTIONS = {
    "rollout_plan", "registry_record", "rollout_finish", "change_window", "synthetic_checks", "wave_gate", "prestage_report",
    "set_fact", "add_host", "debug", "meta", "fail", "assert", "include_role", "import_role", "include_tasks", "group_by",
}
_TICK = os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def layout(hosts: int) -> dict[str, t.Any]:
    """Demo fleet parameters for a node count: 4 regions x 5 tenants x 5 segments x n (50 hosts: 2 regions)."""
    if hosts < 100:
        regions = max(1, hosts // 25)
        return {"demo_fleet_regions": REGIONS[:regions], "demo_fleet_tenants": TENANTS, "demo_fleet_segments": SEGMENTS,
                "demo_fleet_hosts_per_cell": 1}
    params = {"demo_fleet_regions": REGIONS, "demo_fleet_tenants": TENANTS, "demo_fleet_segments": SEGMENTS,
              "demo_fleet_hosts_per_cell": max(1, hosts // 100)}
    if hosts > 240:
        # a /24 holds 254 addresses (nodes, edges and the origin): a larger fleet gets a /22 of its own on loopback,
        # away from the 127.90+ /24s the test harness hands out
        params["demo_fleet_cidr"] = "127.250.0.0/22"
    return params


def _proc_stats() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, utime + stime + cutime + cstime in seconds) of every process we can read."""
    stats: dict[int, tuple[int, float]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as handle:
                text = handle.read()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2:].split()
        # fields[0] is state (field 3); ppid is field 4, utime..cstime fields 14-17
        stats[int(name)] = (int(fields[1]), sum(int(value) for value in fields[11:15]) / _TICK)
    return stats


def tree_cpu(root: int) -> float:
    """CPU seconds of every descendant of root that is alive now, with what each has reaped from its own children."""
    stats = _proc_stats()
    children: dict[int, list[int]] = collections.defaultdict(list)
    for pid, (ppid, _cpu) in stats.items():
        children[ppid].append(pid)
    total, todo = 0.0, list(children[root])
    while todo:
        pid = todo.pop()
        total += stats[pid][1]
        todo.extend(children[pid])
    return total


class TaskMeter:
    """Runner event handler: CPU of the playbook process tree charged to the task that was running."""

    def __init__(self) -> None:
        self.base = children_cpu()
        self.current: str | None = None
        self.mark = 0.0
        self.cpu: dict[str, float] = collections.defaultdict(float)
        self.hosts: dict[str, set[str]] = collections.defaultdict(set)
        self.where: dict[str, str] = {}

    def _sample(self) -> float:
        # reaped children of this process (earlier runs excluded) + the live ansible-playbook tree
        return children_cpu() - self.base + tree_cpu(os.getpid())

    def __call__(self, event: dict[str, t.Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data", {})
        if kind in ("playbook_on_task_start", "playbook_on_stats"):
            now = self._sample()
            self.cpu[self.current or "(start-up, inventory, before the first task)"] += now - self.mark
            self.mark = now
            if kind == "playbook_on_task_start":
                self.current = f"{data.get('play', '')} | {data.get('task', '')}"
                action = str(data.get("task_action", "")).rsplit(".", 1)[-1]
                self.where[self.current] = "controller" if action in CONTROLLER_ACTIONS else "host"
        elif kind.startswith("runner_on_") and kind != "runner_on_start" and self.current and data.get("host"):
            if kind != "runner_on_skipped":
                self.hosts[self.current].add(data["host"])
        return True

    def rows(self) -> list[dict[str, t.Any]]:
        return sorted(({"task": task, "hosts": len(self.hosts.get(task, ())), "cpu": round(cpu, 2), "where": self.where.get(task, "controller")}
                       for task, cpu in self.cpu.items()), key=lambda row: -row["cpu"])


def run_metered(playbook: str, *, inventory: str, extravars: dict[str, t.Any]) -> tuple[t.Any, TaskMeter]:
    meter = TaskMeter()
    with tempfile.TemporaryDirectory(prefix="fleetpatch-runner-") as private_dir:
        runner = ansible_runner.run(private_data_dir=private_dir, playbook=os.path.join(PLAYBOOKS, playbook), inventory=inventory,
                                    extravars=extravars, envvars=envvars(), quiet=True, settings={"suppress_env_files": True},
                                    event_handler=meter)
    return runner, meter


def measure(label: str, playbook: str, *, inventory: str, extravars: dict[str, t.Any], hosts: int) -> dict[str, t.Any]:
    cpu0, wall0 = children_cpu(), time.monotonic()
    runner, meter = run_metered(playbook, inventory=inventory, extravars=extravars)
    cpu, wall = children_cpu() - cpu0, time.monotonic() - wall0
    print(f"    {label:<22} status={runner.status:<10} wall={wall:7.1f}s cpu={cpu:7.1f}s cpu/host={cpu / hosts:.3f}s", flush=True)
    if runner.status != "successful":
        raise SystemExit(f"{label}: {runner.status}: " + (runner.stdout.read()[-3000:] if runner.stdout else ""))
    return {"status": runner.status, "wall": round(wall, 2), "cpu": round(cpu, 2), "hosts": hosts, "tasks": meter.rows()}


def one_size(base: str, hosts_wanted: int, stage: str, round_index: int, *, baseline: bool) -> dict[str, t.Any]:
    """Floor and fleetpatch (and the baseline) on one fresh fleet, in an order that alternates by round."""
    fleet = DemoFleet(os.path.join(base, f"{stage}-{hosts_wanted}-{round_index}"), **layout(hosts_wanted))
    fleet.create()
    try:
        nodes = fleet.nodes()
        preview = fleet.rollout(policy=POLICY, rollout_preview=True)
        plan = next(e["event_data"]["res"] for e in preview.events
                    if e.get("event") == "runner_on_ok" and str(e["event_data"].get("task_action", "")).endswith("rollout_plan"))
        serial = plan["serial"]
        print(f"  {stage} at {len(nodes)} hosts, round {round_index + 1}: batches {serial}", flush=True)
        if stage == "prestaged":
            staged = run_playbook("prestage.yml", inventory=fleet.inventory,
                                  extravars={"prestage_patch_manifest": fleet.manifest(), "prestage_state_dir": fleet.state_dir,
                                             "prestage_allowed_signers_file": fleet.allowed_signers})
            assert staged.status == "successful", staged.stdout[-3000:]
        arms: dict[str, t.Callable[[], dict[str, t.Any]]] = {
            "floor": lambda: measure("floor (ping)", "../bench/floor_rollout.yml", inventory=fleet.inventory,
                                     extravars={"floor_serial": serial}, hosts=len(nodes)),
            "fleetpatch": lambda: measure(f"fleetpatch {stage}", "rollout.yml", inventory=fleet.inventory, hosts=len(nodes), extravars={
                "rollout_patch_manifest": fleet.manifest(), "rollout_state_dir": fleet.state_dir,
                "rollout_policy": fleet.trusting(POLICY), "rollout_stage": stage}),
        }
        if baseline:
            arms["baseline"] = lambda: measure("baseline (builtins)", "../bench/baseline_rollout.yml", inventory=fleet.inventory, hosts=len(nodes),
                                               extravars={"baseline_manifest": fleet.manifest(), "baseline_serial": serial})
        # the floor touches nothing, so it runs on both sides of the rollout on the same fleet and counts as the mean
        # of the two: this VM's speed drifts by a fifth from one minute to the next, and a floor measured on one side
        # only moved a stage's ratio by as much (copy, 200 hosts: floor 58.0 CPU s where the other stages got 67 and 73)
        others = [name for name in arms if name != "floor"]
        order = ["floor", *others, "floor"] if round_index % 2 == 0 else ["floor", *reversed(others), "floor"]
        measured: dict[str, list[dict[str, t.Any]]] = {}
        for name in order:
            measured.setdefault(name, []).append(arms[name]())
        results = {name: runs[0] for name, runs in measured.items()}
        results["floor"] = {"status": "successful", "hosts": len(nodes), "tasks": [],
                            **{key: round(sum(run[key] for run in measured["floor"]) / 2, 2) for key in ("cpu", "wall")},
                            "runs": [{key: run[key] for key in ("cpu", "wall")} for run in measured["floor"]]}
        versions = sorted(set(fleet.versions().values()))
        if versions != ["1.0.1"]:
            raise SystemExit(f"{stage}: hosts ended on {versions}, not 1.0.1")
        return {"hosts": len(nodes), "serial": serial, **results}
    finally:
        fleet.teardown()


def ratio(results: list[dict[str, t.Any]], arm: str, key: str) -> float:
    return sum(r[arm][key] for r in results) / sum(r["floor"][key] for r in results)


def print_breakdown(result: dict[str, t.Any], stage: str) -> None:
    print(f"  per-task CPU, fleetpatch {stage} at {result['hosts']} hosts (total {result['fleetpatch']['cpu']:.1f}s;"
          f" floor {result['floor']['cpu']:.1f}s):")
    print(f"    {'cpu s':>7} {'hosts':>6} {'where':<10} task")
    for row in result["fleetpatch"]["tasks"]:
        if row["cpu"] >= 0.05:
            print(f"    {row['cpu']:7.2f} {row['hosts']:6d} {row['where']:<10} {row['task']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage-size", type=int, default=50, help="hosts of the per-stage comparison")
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--sizes", default="50,100", help="hosts of the cost curve (copy stage), e.g. 50,100,200,400")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--baseline", action="store_true", help="also run the hand-written builtin-module playbook")
    args = parser.parse_args()
    stages = [stage for stage in args.stages.split(",") if stage]
    if any(stage not in STAGES for stage in stages):
        parser.error(f"--stages: choose from {', '.join(STAGES)}")
    sizes = [int(size) for size in args.sizes.split(",") if size]
    summary: dict[str, t.Any] = {"stage_size": args.stage_size, "rounds": args.rounds, "stages": {}, "curve": {}}
    with tempfile.TemporaryDirectory(prefix="fleetpatch-bench-") as base:
        for stage in stages:
            runs = [one_size(base, args.stage_size, stage, index, baseline=args.baseline) for index in range(args.rounds)]
            summary["stages"][stage] = {"runs": runs, "cpu_ratio": round(ratio(runs, "fleetpatch", "cpu"), 3),
                                        "wall_ratio": round(ratio(runs, "fleetpatch", "wall"), 3)}
            print_breakdown(runs[-1], stage)
            if stage == "copy":
                summary["curve"][runs[0]["hosts"]] = runs
        for size in sizes:
            if any(size == hosts for hosts in summary["curve"]):
                continue
            runs = [one_size(base, size, "copy", index, baseline=False) for index in range(args.rounds)]
            summary["curve"][runs[0]["hosts"]] = runs
    print("\nfleetpatch / floor per stage (goal <= 1.3, stretch 1.1):")
    for stage, data in summary["stages"].items():
        print(f"  {stage:<10} CPU {data['cpu_ratio']:.2f}x  wall {data['wall_ratio']:.2f}x  at {data['runs'][0]['hosts']} hosts")
    print("\ncost curve, copy stage (CPU seconds per host):")
    print(f"  {'hosts':>6} {'fleetpatch':>11} {'floor':>8} {'ratio':>6}")
    for hosts in sorted(summary["curve"]):
        runs = summary["curve"][hosts]
        ours = sum(r["fleetpatch"]["cpu"] for r in runs) / len(runs) / hosts
        floor = sum(r["floor"]["cpu"] for r in runs) / len(runs) / hosts
        print(f"  {hosts:>6} {ours:11.3f} {floor:8.3f} {ours / floor:6.2f}")
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "rollout_bench.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
