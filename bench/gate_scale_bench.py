"""Benchmark: the controller's work per batch (change_window + wave_gate) for one batch of 20 hosts in fleets of 1k, 10k, 100k.

A rollout has about fleet/max_concurrency batches, so any per-batch step that reads or writes the whole fleet makes
the run O(fleet^2). This bench plans a fleet in memory (``fleetpatch.rollout.rollout_plan`` in this process, embedded
store in a temp dir), marks the first half of the batches done in the store (their outcomes, decisions and completed
batches, as a run half way through holds them), then runs the real action plugins of the next batches the way the
role's tasks run them:

- templating the task's arguments with ansible-core's Templar over the same variables (the role's ``plan:`` argument,
  when given, is the whole registered plan result; without it the action reads the plan result by variable name);
- ``change_window`` (calendar check, the run loaded from the store);
- ``wave_gate`` (verdicts of the 20 apply results, no health URL so no probe, outcomes recorded, decision saved, events).

It prints the median CPU time of the process per batch for every fleet size: flat from 1k to 100k means O(batch).

    .venv/bin/python bench/gate_scale_bench.py [--sizes 1000,10000,100000] [--batches 7] [--mode both|arg|var]
"""

from __future__ import annotations

import argparse
import collections.abc
import copy
import dataclasses
import importlib
import os
import statistics
import sys
import tempfile
import time
import typing as t
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

import tests.conftest  # noqa: E402,F401  # pylint: disable=unused-import  # installs the collection loader
from ansible.parsing.dataloader import DataLoader  # noqa: E402
from ansible.template import Templar, trust_as_template  # noqa: E402

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store import open_store, outcome_entry  # noqa: E402

PLUGINS = "ansible_collections.fleetpatch.rollout.plugins.action"
MANIFEST: dict[str, t.Any] = {
    "patch_id": "FP-GATE-SCALE-1", "service": "myapp", "target_version": "1.0.1", "change_type": "scheduled",
    "classification": "functional", "justification": "bench", "affected_versions": ["1.0.0"], "regression_risk": "low",
    "requested_by": "alice", "approvals": [{"by": "bob"}],
    "artifact": {"url": "http://artifacts.invalid/myapp-1.0.1.tar.gz", "sha256": "a" * 64},
}
BATCH = 20
# waves in percent; max_concurrency makes every batch after the canary BATCH hosts
POLICY: dict[str, t.Any] = {"canary": {"size": 1}, "waves": ["5%", "50%", "100%"], "max_concurrency": BATCH}
# the role's task argument before issue 19: the whole plan result templated into every per-batch task
PLAN_ARG = "{{ hostvars['localhost']['__rollout_plan'] }}"
RUN_ID_ARG = "{{ hostvars['localhost']['__rollout_plan']['run_id'] }}"


@dataclasses.dataclass
class _Shell:
    tmpdir: str | None = None


@dataclasses.dataclass
class _Connection:
    _shell: _Shell = dataclasses.field(default_factory=_Shell)


@dataclasses.dataclass
class _Task:
    args: dict[str, t.Any]
    action: str = "fleetpatch.rollout.bench"
    check_mode: bool = False
    async_val: int = 0
    diff: bool = False
    _uuid: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)

    def get_search_path(self) -> list[str]:
        return []


class HostVars(collections.abc.Mapping):
    """What ansible-core hands a task as hostvars (ansible.vars.hostvars.HostVars): a mapping that is not a dict, so
    templating wraps only the host it reads, not every host; raw_get gives a host's variables as stored."""

    def __init__(self, hosts: dict[str, dict[str, t.Any]]) -> None:
        self._hosts = hosts

    def raw_get(self, host: str) -> dict[str, t.Any]:
        return self._hosts[host]

    def __getitem__(self, host: str) -> dict[str, t.Any]:
        return self._hosts[host]

    def __iter__(self) -> t.Iterator[str]:
        return iter(self._hosts)

    def __len__(self) -> int:
        return len(self._hosts)


def run_action(name: str, args: dict[str, t.Any], task_vars: dict[str, t.Any]) -> dict[str, t.Any]:
    module = importlib.import_module(f"{PLUGINS}.{name}")
    loader = DataLoader()
    action = module.ActionModule(_Task(args=args, action=f"fleetpatch.rollout.{name}"), _Connection(), None, loader, Templar(loader=loader), None)
    result = action.run(task_vars=task_vars)
    if result.get("failed"):
        raise SystemExit(f"{name} failed: {result.get('msg')}")
    return result


def fleet_vars(size: int, root: str) -> dict[str, dict[str, t.Any]]:
    """Inventory variables: 10 regions x 20 tenants x 5 segments, one non-production environment."""
    hostvars = {}
    for number in range(size):
        cell = number % 1000
        hostvars[f"node{number:06d}"] = {"fleet_region": f"r{cell % 10}", "fleet_tenant": f"t{cell // 10 % 20}", "fleet_segment": f"s{cell // 200}",
                                         "fleet_environment": "staging", "fleetpatch_host_root": f"{root}/node{number:06d}"}
    return hostvars


def half_done(run: dict[str, t.Any], upto: int) -> None:
    """The store of a run half way through: every batch before upto patched, decided and completed."""
    store = open_store(run["state_dir"], backend=run.get("state_backend"))
    plan = run["plan"]
    state = store.load_run(run["run_id"])
    assert state is not None
    outcomes = {}
    for batch in plan["batches"][:upto]:
        wave = plan["waves"][batch["wave"]]["name"]
        for host in batch["hosts"]:
            outcomes[host] = outcome_entry("patched", at="2026-03-11T05:00:00Z", batch=batch["index"], wave=wave)
        state.setdefault("decisions", []).append({"at": "2026-03-11T05:00:00Z", "batch": batch["index"], "wave": wave, "action": "continue",
                                                  "reasons": [f"batch {batch['index']}: {len(batch['hosts'])} host(s) patched"]})
        state.setdefault("completed_batches", []).append(batch["index"])
    store.record_outcomes(run["run_id"], outcomes)
    store.save_run(run["run_id"], state)


def one_batch(run: dict[str, t.Any], index: int, task_vars: dict[str, t.Any], *, mode: str) -> float:
    """CPU seconds of the controller's per-batch work for batch index: argument templating, change_window, wave_gate."""
    plan = run["plan"]
    hosts = plan["batches"][index]["hosts"]
    for host in hosts:
        task_vars["hostvars"].raw_get(host)["__rollout_apply"] = {"changed": True, "version": "1.0.1"}
    play_vars = dict(task_vars, ansible_play_batch=hosts)
    started = time.process_time()
    templar = Templar(loader=DataLoader(), variables=play_vars)
    raw = {"run_id": trust_as_template(RUN_ID_ARG), **({"plan": trust_as_template(PLAN_ARG)} if mode == "arg" else {})}
    args = templar.template(raw)
    window = run_action("change_window", dict(args, clock="2026-03-11T05:00:00Z"), play_vars)
    gate = run_action("wave_gate", dict(args, bake_seconds=0), play_vars)
    spent = time.process_time() - started
    if not window["fits"] or gate["batch"] != index or gate["action"] != "continue":
        raise SystemExit(f"batch {index}: unexpected window {window['msg']!r} / gate {gate['msg']!r}")
    return spent


def measure(size: int, base: str, *, batches: int, modes: list[str]) -> dict[str, float]:
    hostvars = fleet_vars(size, os.path.join(base, "hosts"))
    state_dir = os.path.join(base, f"state-{size}")
    task_vars: dict[str, t.Any] = {"hostvars": HostVars(hostvars), "ansible_play_hosts_all": list(hostvars)}
    started = time.monotonic()
    run = run_action("rollout_plan", {"manifest": copy.deepcopy(MANIFEST), "targets": list(hostvars), "policy": copy.deepcopy(POLICY),
                                      "state_dir": state_dir, "clock": "2026-03-11T05:00:00Z"}, task_vars)
    hostvars["localhost"] = {"__rollout_plan": run}
    middle = len(run["plan"]["batches"]) // 2
    half_done(run, middle)
    print(f"  {size} hosts: {len(run['plan']['batches'])} batches, planned and half done in {time.monotonic() - started:.1f} s", flush=True)
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    index = middle
    for _round in range(batches):
        for mode in modes:  # interleaved, so that noise from other work hits both alike
            if len(run["plan"]["batches"][index]["hosts"]) != BATCH:
                raise SystemExit(f"batch {index} has {len(run['plan']['batches'][index]['hosts'])} hosts, not {BATCH}")
            times[mode].append(one_batch(run, index, task_vars, mode=mode))
            index += 1
    return {mode: statistics.median(values) for mode, values in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--batches", type=int, default=7, help="batches measured per size and mode (median reported)")
    parser.add_argument("--mode", choices=["both", "arg", "var"], default="both",
                        help="arg: the plan result templated into a plan argument (as the role did); var: read by variable name")
    args = parser.parse_args()
    os.environ["FLEETPATCH_EVENTS_REQUIRED"] = "false"
    for name in ("FLEETPATCH_EVENTS_ACTIVE", "FLEETPATCH_CORRELATION_ID", "FLEETPATCH_STATE_DIR"):
        os.environ.pop(name, None)
    modes = ["arg", "var"] if args.mode == "both" else [args.mode]
    sizes = [int(size) for size in args.sizes.split(",") if size]
    rows = []
    with tempfile.TemporaryDirectory(prefix="fleetpatch-gate-scale-") as base:
        for size in sizes:
            rows.append((size, measure(size, base, batches=args.batches, modes=modes)))
    print(f"\nCPU per batch of {BATCH} hosts (templating + change_window + wave_gate), median of {args.batches} batches:")
    print(f"{'hosts':>8} " + " ".join(f"{mode + ' ms':>10}" for mode in modes) + "   " + " ".join(f"{mode + ' x1k':>8}" for mode in modes))
    first = rows[0][1]
    for size, found in rows:
        print(f"{size:>8} " + " ".join(f"{found[mode] * 1000:>10.1f}" for mode in modes) + "   "
              + " ".join(f"{found[mode] / first[mode]:>8.2f}" for mode in modes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
