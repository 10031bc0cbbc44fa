"""Benchmark: the event callback's cost on a playbook run, and the verifier's cost against a bare sha256 pass.

1. callback on vs off: bench/events_tasks.yml (5 tasks, 3 of them module executions) over a demo fleet of at least
   200 nodes, runs interleaved in one process (off, on, on, off, ...). CPU seconds are the children's rusage
   (ansible-playbook and every process it forks), wall time is measured around each run. Goal: <= 1.03x.
   The recorder's own CPU for a run's events is also measured apart (a lower bound of the callback's cost, free of the
   playbook runs' noise).
2. verify of an event file of 500,000 lines written by the real recorder (host.task events like a rollout's) against
   a bare sha256 pass over the same file (Python hashlib in 1 MiB chunks, and coreutils sha256sum), page cache warm,
   best of N. Goal: <= 1.5x. Also measured: a plain pass that hashes every line on its own with hashlib (nothing
   parsed or compared) over as many processes as the verifier uses. The chain format needs that much work in any
   verifier written in Python, so the report shows how much of the verifier's time the per-line hashing takes.

    .venv/bin/python bench/events_bench.py [--rounds 3] [--hosts-per-cell 2] [--lines 500000] [--skip-playbook] [--skip-verify]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

import tests.conftest  # noqa: E402,F401  # pylint: disable=unused-import  # installs the collection loader
from tests.integration.rollout_harness import ANSIBLE_CFG, DemoFleet  # noqa: E402

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._event_verify import (  # noqa: E402
    _chunks,
    scan_ranges,
    verify_event_file,
)
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._events import RecorderOptions, RunRecorder  # noqa: E402

PLAYBOOK = os.path.join(HERE, "events_tasks.yml")
FLEET = {"demo_fleet_regions": ["eu-west", "us-east", "ap-south", "sa-east"], "demo_fleet_tenants": ["t1", "t2", "t3", "t4", "t5"],
         "demo_fleet_segments": ["web", "api", "worker", "batch", "cron"]}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def configs(base: str) -> dict[bool, str]:
    """The repository's ansible.cfg with and without the event callback; nothing else differs."""
    with open(ANSIBLE_CFG, encoding="utf-8") as handle:
        text = handle.read()
    lines = [line for line in text.splitlines() if not line.startswith("callbacks_enabled")]
    at = lines.index("[defaults]") + 1
    paths = {True: os.path.join(base, "on.cfg"), False: os.path.join(base, "off.cfg")}
    for enabled, path in paths.items():
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines[:at] + (["callbacks_enabled = fleetpatch.rollout.events"] if enabled else []) + lines[at:]) + "\n")
    return paths


def run_playbook(fleet: DemoFleet, *, callback: bool, events: str, config: str) -> dict[str, float]:
    env = dict(os.environ, ANSIBLE_CONFIG=config, ANSIBLE_NOCOLOR="1", ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, "collections"))
    for name in ("FLEETPATCH_EVENTS_PATH", "ANSIBLE_CALLBACKS_ENABLED"):
        env.pop(name, None)
    if callback:
        env["FLEETPATCH_EVENTS_PATH"] = events
    command = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", fleet.inventory, PLAYBOOK]
    cpu0, wall0 = children_cpu(), time.monotonic()
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    wall, cpu = time.monotonic() - wall0, children_cpu() - cpu0
    if done.returncode != 0:
        raise SystemExit(f"playbook failed ({'on' if callback else 'off'}):\n{done.stdout[-3000:]}")
    return {"wall": wall, "cpu": cpu}


def bench_playbook(rounds: int, hosts_per_cell: int) -> dict[str, object]:
    base = tempfile.mkdtemp(prefix="fleetpatch-events-bench-")
    fleet = DemoFleet(base, demo_fleet_hosts_per_cell=hosts_per_cell, **FLEET)
    fleet.create()
    results: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    event_lines = 0
    try:
        nodes = len(fleet.nodes())
        print(f"playbook: {nodes} demo nodes x 5 tasks, {rounds} round(s) of off/on interleaved", flush=True)
        config = configs(base)
        run_playbook(fleet, callback=False, events="", config=config[False])  # warm-up: page cache, pyc files
        for index in range(rounds):
            order = ("off", "on") if index % 2 == 0 else ("on", "off")
            for which in order:
                events = os.path.join(base, f"events-{index}.jsonl")
                measured = run_playbook(fleet, callback=which == "on", events=events, config=config[which == "on"])
                results[which].append(measured)
                lines = sum(1 for _line in open(events, "rb")) if which == "on" else 0
                event_lines = max(event_lines, lines)
                print(f"  round {index + 1} {which:3}  wall {measured['wall']:7.2f}s  cpu {measured['cpu']:7.2f}s"
                      + (f"  ({lines} event lines, verify: {'ok' if verify_event_file(events).ok else 'FAILED'})" if lines else ""), flush=True)
    finally:
        fleet.teardown()
        shutil.rmtree(base, ignore_errors=True)
    summary: dict[str, object] = {"nodes": nodes, "rounds": rounds}
    for key in ("wall", "cpu"):
        off = statistics.median(run[key] for run in results["off"])
        on = statistics.median(run[key] for run in results["on"])
        summary[key] = {"off_median": round(off, 3), "on_median": round(on, 3), "ratio": round(on / off, 4),
                        "per_round": [round(on_run[key] / off_run[key], 4) for on_run, off_run in zip(results["on"], results["off"])]}
    summary["recorder"] = recorder_cost(event_lines, statistics.median(run["cpu"] for run in results["off"]))
    return summary


def recorder_cost(events_per_run: int, off_cpu: float, sample: int = 20000) -> dict[str, float]:
    """The recorder's own CPU for one run's events, measured apart from the playbook's run-to-run noise: a lower
    bound of the callback's cost (Ansible's hook dispatch and the hooks' result conversion are not in it)."""
    base = tempfile.mkdtemp(prefix="fleetpatch-recorder-bench-")
    try:
        path = os.path.join(base, "events.jsonl")
        _wall, cpu = timed(lambda: write_event_file(path, sample, fsync=True))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    per_event = cpu / sample
    print(f"  recorder: {per_event * 1e6:.1f} us CPU per event (fsync at each flush) -> {per_event * events_per_run:.3f} s for "
          f"{events_per_run} events = {per_event * events_per_run / off_cpu:.5f} of a run's {off_cpu:.1f} CPU-s", flush=True)
    return {"us_per_event": round(per_event * 1e6, 2), "seconds_per_run": round(per_event * events_per_run, 4),
            "ratio": round(1 + per_event * events_per_run / off_cpu, 5)}


def write_event_file(path: str, lines: int, *, fsync: bool = False) -> None:
    """lines events, written by the real recorder: host.task results like a rollout's apply and gate tasks."""
    recorder = RunRecorder(RecorderOptions(path=path, correlation_id="awx-job-4242", fsync=fsync, flush_seconds=1.0),
                           warn=print, say=lambda _text: None, environ={}, timer=False)
    recorder.playbook_start(playbook="playbooks/rollout.yml", check_mode=False, ansible_version="2.19")
    hosts = [f"{region}-t{tenant}-{segment}-prod-{index:02d}" for region in ("eu-west", "us-east") for tenant in range(5)
             for segment in ("web", "api", "worker", "batch", "cron") for index in range(1, 5)]
    attributes = {host: {"region": host.split("-t")[0], "tenant": "t" + host.split("-t")[1][0], "segment": host.split("-")[3],
                         "environment": "prod"} for host in hosts}
    recorder.play_start(name="Roll the patch out", hosts=["fleetpatch_plan_hosts"], extra_vars={}, host_attributes=attributes)
    result = {"changed": True, "version": "1.0.1", "release": "/opt/fleetpatch/apps/myapp/releases/1.0.1",
              "artifact_sha256": "9f" * 32, "health": {"ok": True, "status": 200, "latency_ms": 3.2, "version": "1.0.1"},
              "previous": {"version": "1.0.0", "release": "/opt/fleetpatch/apps/myapp/releases/1.0.0"}, "msg": "installed 1.0.1"}
    for number in range(lines - 3):
        host = hosts[number % len(hosts)]
        recorder.host_task_start(host=host, task_uuid=str(number))
        recorder.host_task_result(host=host, task_uuid=str(number), task="Verify, unpack, switch, restart and record (one module execution)",
                                  action="fleetpatch.rollout.patch_apply", status="ok", result=result, hook="v2_runner_on_ok")
    recorder.playbook_end(stats={})


def timed(func) -> tuple[float, float]:
    cpu0, children0, wall0 = self_cpu(), children_cpu(), time.monotonic()
    func()
    return time.monotonic() - wall0, (self_cpu() - cpu0) + (children_cpu() - children0)


def sha256_pass(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_each_line(path: str, start: int, end: int) -> int:
    """sha256 of every line of [start, end) on its own, read in the verifier's chunks."""
    count, sha256 = 0, hashlib.sha256
    for lines, _is_last in _chunks(path, start, end):
        for line in lines:
            sha256(line).digest()
        count += len(lines)
    return count


def per_line_floor(path: str) -> int:
    """Every line hashed on its own, over the verifier's ranges and processes."""
    return sum(scan_ranges(path, hash_each_line)[1])


def bench_verify(lines: int, repeats: int, events_file: str | None) -> dict[str, object]:
    base = tempfile.mkdtemp(prefix="fleetpatch-verify-bench-")
    path = events_file or os.path.join(base, "events.jsonl")
    try:
        started = time.monotonic()
        if not os.path.exists(path):
            write_event_file(path, lines)
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda handle=open(path, "rb"): handle.read(1 << 24), b""))
        size = os.path.getsize(path)
        print(f"verify: {lines} lines, {size / 1e6:.1f} MB (ready in {time.monotonic() - started:.1f}s)", flush=True)
        report = verify_event_file(path)
        assert report.ok and report.lines == lines and not report.findings, report.as_dict()
        assert per_line_floor(path) == lines
        measured: dict[str, list[tuple[float, float]]] = {"hashlib": [], "sha256sum": [], "per_line": [], "verify": []}
        for _repeat in range(repeats):
            measured["hashlib"].append(timed(lambda: sha256_pass(path)))
            if shutil.which("sha256sum"):
                measured["sha256sum"].append(timed(lambda: subprocess.run(["sha256sum", path], stdout=subprocess.DEVNULL, check=True)))
            measured["per_line"].append(timed(lambda: per_line_floor(path)))
            measured["verify"].append(timed(lambda: verify_event_file(path)))
        summary: dict[str, object] = {"lines": lines, "bytes": size, "repeats": repeats}
        for name, runs in measured.items():
            if runs:
                summary[name] = {"wall_best": round(min(run[0] for run in runs), 3), "cpu_best": round(min(run[1] for run in runs), 3),
                                 "wall_median": round(statistics.median(run[0] for run in runs), 3)}
                print(f"  {name:9}  wall best {summary[name]['wall_best']:6.3f}s median {summary[name]['wall_median']:6.3f}s"
                      f"  cpu best {summary[name]['cpu_best']:6.3f}s", flush=True)
        for baseline in ("hashlib", "sha256sum", "per_line"):
            if baseline in summary:
                summary[f"ratio_vs_{baseline}"] = {
                    "wall": round(summary["verify"]["wall_best"] / summary[baseline]["wall_best"], 3),  # type: ignore[index]
                    "wall_median": round(summary["verify"]["wall_median"] / summary[baseline]["wall_median"], 3),  # type: ignore[index]
                    "cpu": round(summary["verify"]["cpu_best"] / summary[baseline]["cpu_best"], 3)}  # type: ignore[index]
        summary["per_line_vs_hashlib"] = {  # per-line hashing alone, against the goal's baseline
            "wall": round(summary["per_line"]["wall_best"] / summary["hashlib"]["wall_best"], 3),  # type: ignore[index]
            "wall_median": round(summary["per_line"]["wall_median"] / summary["hashlib"]["wall_median"], 3)}  # type: ignore[index]
        return summary
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hosts-per-cell", type=int, default=2, help="4 regions x 5 tenants x 5 segments x this = nodes (default 200)")
    parser.add_argument("--lines", type=int, default=500000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-playbook", action="store_true")
    parser.add_argument("--skip-verify", action="store_true")
    parser.add_argument("--events-file", help="verify this event file (written there by the recorder first if missing) and keep it")
    args = parser.parse_args()
    results: dict[str, object] = {}
    if not args.skip_playbook:
        results["playbook"] = bench_playbook(args.rounds, args.hosts_per_cell)
    if not args.skip_verify:
        results["verify"] = bench_verify(args.lines, args.repeats, args.events_file)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
