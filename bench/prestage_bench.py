"""Benchmark: pre-staging a multi-megabyte patch across a 3-region demo fleet.

Measures, on the embedded demo fleet (one edge per region, cold edge caches):

1. origin bytes: what the origin served while playbooks/prestage.yml staged the full bundle everywhere
   (goal: one copy per region), and what the edges served;
2. second run: payload bytes of a re-run (goal: 0) and its cost against a plain ``ansible.builtin.stat`` pass
   with a sha256 checksum of the same cached file on the same hosts (goal: at most 1.1x), in wall and CPU
   seconds (the children's rusage: ansible-playbook and every module process), rounds interleaved. Two re-runs
   are compared: the ``fleetpatch.rollout.prestage`` module alone (one execution per host, like the stat pass)
   and the whole ``playbooks/prestage.yml`` (role argument validation on every host, three plays, the report);
3. delta size: the delta bundle of a one-file change in a multi-megabyte release against the full bundle
   (goal: at most 5%).

    .venv/bin/python bench/prestage_bench.py [--hosts-per-cell 2] [--rounds 3] [--release-mb 8]
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import typing as t
import urllib.request

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

import tests.conftest  # noqa: E402,F401  # pylint: disable=unused-import  # installs the collection loader
from tests.integration.rollout_harness import DemoFleet, run_playbook  # noqa: E402

REGIONS = ["eu-west", "us-east", "ap-south"]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(func: t.Callable[[], t.Any]) -> tuple[t.Any, float, float]:
    cpu0, wall0 = children_cpu(), time.monotonic()
    result = func()
    return result, time.monotonic() - wall0, children_cpu() - cpu0


def metric_bytes(url: str) -> int:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:  # loopback only
        return json.load(response)["bytes_sent_total"]


def write_release(root: str, *, megabytes: int, change: bytes = b"") -> None:
    """A release of `megabytes` MiB: incompressible data files, a text tree, and an executable."""
    os.makedirs(os.path.join(root, "share", "data"), exist_ok=True)
    os.makedirs(os.path.join(root, "lib", "app"), exist_ok=True)
    os.makedirs(os.path.join(root, "bin"), exist_ok=True)
    for index in range(megabytes):
        block = b"".join(hashlib.sha256(f"{index}/{n}".encode()).digest() for n in range(32768))  # 1 MiB
        if index == 0 and change:
            block = block[:4096] + change + block[4096 + len(change):]
        with open(os.path.join(root, "share", "data", f"part-{index:02d}.bin"), "wb") as handle:
            handle.write(block)
    for index in range(200):
        with open(os.path.join(root, "lib", "app", f"module_{index:03d}.py"), "w", encoding="utf-8") as handle:
            handle.write(f'"""Module {index}."""\n\n' + "".join(f"def f{n}(x):\n    return x + {n}\n\n" for n in range(40)))
    with open(os.path.join(root, "bin", "app"), "w", encoding="utf-8") as handle:
        handle.write("#!/bin/sh\nexec python3 -m app \"$@\"\n")
    os.chmod(os.path.join(root, "bin", "app"), 0o755)
    with open(os.path.join(root, "VERSION"), "w", encoding="utf-8") as handle:
        handle.write("bench\n")


def build_bundles(base: str, workdir: str, dest: str, url_base: str, megabytes: int) -> dict[str, t.Any]:
    """fleetpatch.rollout.patch_bundle through a playbook: 2.0.0 (full, delta against 1.9.0)."""
    old, new = os.path.join(workdir, "src-1.9.0"), os.path.join(workdir, "src-2.0.0")
    write_release(old, megabytes=megabytes)
    write_release(new, megabytes=megabytes, change=b"one-file hotfix")
    out = os.path.join(workdir, "built.json")
    playbook = os.path.join(workdir, "build.yml")
    with open(playbook, "w", encoding="utf-8") as handle:
        yaml.safe_dump([{"name": "Build", "hosts": "localhost", "gather_facts": False, "tasks": [
            {"name": "Bundle", "register": "built", "fleetpatch.rollout.patch_bundle": {
                "source": new, "base": old, "dest": dest, "patch_id": "FP-BENCH-2", "service": "myapp",
                "target_version": "2.0.0", "base_version": "1.9.0", "target_tag": "patch", "url_base": url_base,
                "build_time": "2026-01-01T00:00:00Z"}},
            {"name": "Keep", "ansible.builtin.copy": {"content": "{{ built | to_json }}", "dest": out, "mode": "0644"}},
        ]}], handle)
    result = run_playbook(playbook)
    assert result.status == "successful", result.stdout[-3000:]
    with open(out, encoding="utf-8") as handle:
        return json.load(handle)


def one_task_playbook(workdir: str, name: str, task: dict[str, t.Any]) -> str:
    path = os.path.join(workdir, f"{name}.yml")
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump([{"name": name, "hosts": "fleet_edges:fleet_nodes", "gather_facts": False, "tasks": [task]}], handle)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts-per-cell", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--release-mb", type=int, default=8)
    args = parser.parse_args()
    params = {"demo_fleet_regions": REGIONS, "demo_fleet_tenants": ["acme", "globex"], "demo_fleet_segments": ["web", "api"],
              "demo_fleet_hosts_per_cell": args.hosts_per_cell}
    with tempfile.TemporaryDirectory(prefix="fleetpatch-prestage-bench-") as base:
        fleet = DemoFleet(os.path.join(base, "fleet"), **params)
        fleet.create()
        try:
            info = fleet.fleet()
            origin_url = info["origin"]["url"]
            built = build_bundles(base, base, info["origin"]["artifacts_dir"], origin_url + "/artifacts/", args.release_mb)
            full, delta = built["bundle"], built["delta"]
            manifest = os.path.join(base, "FP-BENCH-2.yml")
            with open(manifest, "w", encoding="utf-8") as handle:
                # the full bundle only: every node takes the whole multi-megabyte artifact from its edge
                artifact = {key: value for key, value in built["artifact"].items() if key != "delta"}
                yaml.safe_dump({"patch_id": "FP-BENCH-2", "service": "myapp", "target_version": "2.0.0", "artifact": artifact}, handle)
            for edge in info["edges"]:  # cold edges
                for path in glob.glob(os.path.join(info["hosts"][edge]["root"], "cache", "sha256", "*")):
                    os.unlink(path)
            extravars = {"prestage_patch_manifest": manifest, "prestage_state_dir": os.path.join(base, "state")}
            edge_urls = {edge: f"http://{info['hosts'][edge]['address']}:{info['port']}" for edge in info["edges"]}
            origin0 = metric_bytes(origin_url)
            edges0 = {edge: metric_bytes(url) for edge, url in edge_urls.items()}
            first, first_wall, first_cpu = timed(lambda: run_playbook("prestage.yml", inventory=fleet.inventory, extravars=extravars))
            assert first.status == "successful", first.stdout[-3000:]
            origin1 = metric_bytes(origin_url)
            edges1 = {edge: metric_bytes(url) for edge, url in edge_urls.items()}
            nodes = len(fleet.nodes())
            # every /metrics read is about 200 bytes of the counter; payloads are megabytes
            origin_served = origin1 - origin0
            edge_served = sum(edges1.values()) - sum(edges0.values())
            print(f"fleet: {len(REGIONS)} regions, {nodes} nodes, {len(info['edges'])} edges; full bundle {full['size']} bytes")
            print(f"first run: origin served {origin_served} bytes = {origin_served / full['size']:.3f} copies "
                  f"(goal {len(REGIONS)}, one per region); edges served {edge_served} bytes = {edge_served / full['size']:.3f} "
                  f"copies for {nodes} nodes; wall {first_wall:.1f}s cpu {first_cpu:.1f}s", flush=True)

            playbooks = {
                "stat": one_task_playbook(base, "stat", {"name": "Stat the cached artifact", "ansible.builtin.stat": {
                    "path": "{{ fleetpatch_host_root }}/cache/sha256/" + full["sha256"], "get_checksum": True,
                    "checksum_algorithm": "sha256"}}),
                # the same module execution the role makes on a node (edge_url from its fleet_edge)
                "module": one_task_playbook(base, "module", {"name": "Stage", "fleetpatch.rollout.prestage": {
                    "root": "{{ fleetpatch_host_root }}", "service": "myapp", "version": "2.0.0", "sha256": full["sha256"],
                    "size": full["size"], "url": artifact["url"], "delta_mode": "auto",
                    "edge_url": "{{ hostvars[fleet_edge].fleet_edge_cache_url if fleet_edge is defined else omit }}"}}),
            }
            rerun: dict[str, list[tuple[float, float]]] = {"playbook": [], "module": [], "stat": []}
            payload = []
            for round_index in range(args.rounds):
                order = ["stat", "module", "playbook"] if round_index % 2 == 0 else ["playbook", "module", "stat"]
                for which in order:
                    if which == "playbook":
                        before = metric_bytes(origin_url) + sum(metric_bytes(url) for url in edge_urls.values())
                        result, wall, cpu = timed(lambda: run_playbook("prestage.yml", inventory=fleet.inventory, extravars=extravars))
                        assert result.status == "successful", result.stdout[-3000:]
                        moved = sum(res.get("transferred_bytes", 0) for res in result.task_results("prestage").values())
                        served = metric_bytes(origin_url) + sum(metric_bytes(url) for url in edge_urls.values()) - before
                        payload.append({"module_transferred_bytes": moved, "served_bytes_incl_metrics_reads": served})
                    else:
                        result, wall, cpu = timed(lambda: run_playbook(playbooks[which], inventory=fleet.inventory))
                        assert result.status == "successful", result.stdout[-3000:]
                        if which == "module":
                            assert not any(res.get("changed") for res in result.task_results("prestage").values())
                    rerun[which].append((wall, cpu))
                    print(f"  round {round_index + 1} {which:<9} wall={wall:6.2f}s cpu={cpu:6.2f}s", flush=True)
        finally:
            fleet.teardown()

    def median(which: str, index: int) -> float:
        return statistics.median(sample[index] for sample in rerun[which])

    summary = {
        "regions": len(REGIONS),
        "nodes": nodes,
        "full_bundle_bytes": full["size"],
        "origin_bytes_first_run": origin_served,
        "origin_copies_first_run": round(origin_served / full["size"], 3),
        "edge_bytes_first_run": edge_served,
        "first_run": {"wall": round(first_wall, 2), "cpu": round(first_cpu, 2)},
        "second_run_payload": payload,
        "second_run_transferred_bytes": max(item["module_transferred_bytes"] for item in payload),
        "rerun_wall_median": {which: round(median(which, 0), 3) for which in rerun},
        "rerun_cpu_median": {which: round(median(which, 1), 3) for which in rerun},
        "module_rerun_vs_stat_cpu": round(median("module", 1) / median("stat", 1), 3),
        "module_rerun_vs_stat_wall": round(median("module", 0) / median("stat", 0), 3),
        "playbook_rerun_vs_stat_cpu": round(median("playbook", 1) / median("stat", 1), 3),
        "playbook_rerun_vs_stat_wall": round(median("playbook", 0) / median("stat", 0), 3),
        "delta_bytes": delta["size"],
        "delta_percent_of_full": round(100.0 * delta["size"] / full["size"], 3),
        "delta_ops": delta["ops"],
        "delta_tool": delta["tool"],
        "rounds": args.rounds,
        "load_average": os.getloadavg(),
    }
    print(json.dumps({key: summary[key] for key in (
        "origin_copies_first_run", "second_run_transferred_bytes", "module_rerun_vs_stat_cpu",
        "playbook_rerun_vs_stat_cpu", "delta_percent_of_full")}))
    print(f"origin: {summary['origin_copies_first_run']} copies for {len(REGIONS)} regions (goal {len(REGIONS)}); "
          f"second run payload {summary['second_run_transferred_bytes']} bytes (goal 0); re-run vs stat+sha256 (CPU): "
          f"module {summary['module_rerun_vs_stat_cpu']}x, whole playbook {summary['playbook_rerun_vs_stat_cpu']}x "
          f"(goal <= 1.1; wall {summary['module_rerun_vs_stat_wall']}x / {summary['playbook_rerun_vs_stat_wall']}x); delta "
          f"{summary['delta_bytes']} bytes = {summary['delta_percent_of_full']}% of the full bundle (goal <= 5%)")
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "prestage_bench.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
