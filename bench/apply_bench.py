"""Micro-benchmark: the host-side cost of one ``fleetpatch.rollout.patch_apply`` execution against one ``ansible.builtin.ping``.

On a one-node demo fleet, the real AnsiballZ payloads (what Ansible runs on a host, kept with ANSIBLE_KEEP_REMOTE_FILES)
of one patch_apply task (the arguments the rollout role gives it in ``rollout_stage=url``) and one ping task are run
again and again as plain processes, rounds interleaved so load on the machine hits every arm alike:

* fresh (url): the host as the demo fleet made it (1.0.0 current, empty cache): download, digest, signature
  (ssh-keygen), unpack, switch, restart (the demo's restart command), manifest, health, prune;
* fresh (cached): the same with the artifact already in the host's cache (pre-staged or copied);
* fresh (copy): the module as ``rollout_stage=copy`` runs it: the artifact came over the connection into the task's
  remote tmp dir and the module takes it from there (``file://``) instead of the origin;
* idempotent: the host runs the target already (a resumed rollout): verify the release tree, health;
* ping: the floor, one ``ansible.builtin.ping``;
* fresh (url), cold cache: fresh (url) with an empty bytecode cache (module_utils/_bytecode.py; a directory of its
  own, emptied before each execution, so the other arms keep their warm one): the first execution per host and
  collection version, which compiles the collection's module_utils and stores them;
* fresh (url), no cache: fresh (url) with FLEETPATCH_BYTECODE_CACHE=off (every file compiled from the zip, as before
  the cache);
* hook arms (``fresh_url_hook``, ``idempotent_hook``, ``fresh_url_hook_cold``): the execution as the action plugin runs
  it where the connection does not pipeline (the local one, ssh without pipelining, the copy stage): the host bytecode
  cache put beside the payload as ``sitecustomize.py`` and that directory first on PYTHONPATH
  (plugin_utils/_host_startup.py), so ansible-core's module_utils load from the cache too. The file is put there
  again before each execution (a task's remote tmp dir is new every time: Python compiles the hook itself each time).
  The cold one starts from an empty cache directory (the first execution per host, user, ansible-core and collection
  version). The other arms run the payload as a pipelined connection would (no hook).

Every other arm runs with a warm cache (a real fleet's steady state: the first run per host and collection version
fills it); the cache lives in the bench's temp dir (FLEETPATCH_BYTECODE_CACHE_DIR), filled before the rounds.

CPU seconds are the children's rusage of each execution (the module process and every process it waits for: the
restart command, ssh-keygen), not the demo supervisor's. Then one ``-X importtime`` run per arm lists what the module
imports beyond what ping imports, by self time (an AnsiballZ module runs from a zip: every module_utils file it imports
is compiled from source on every execution).

With ``--baseline DIR`` (a checkout of another commit, e.g. ``git worktree add /tmp/base HEAD~3``), the patch_apply
payload is built a second time from DIR's collection and its fresh (url), fresh (cached) and idempotent arms run
interleaved with this checkout's (``base:`` arms): a before/after under the same machine state. The base arms restart
the service with DIR's demo ``fleetctl.py`` (copied next to the fleet's own, run as ``python fleetctl.py restart HOST``).

    .venv/bin/python bench/apply_bench.py [--rounds 10] [--top 15] [--json FILE] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import typing as t

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

import tests.conftest  # noqa: E402,F401  # pylint: disable=unused-import  # installs the collection loader
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils import _host_startup  # noqa: E402
from tests.integration.rollout_harness import DemoFleet, envvars  # noqa: E402

ARMS = ("fresh_url", "fresh_cached", "fresh_copy", "idempotent", "ping", "fresh_url_cold", "fresh_url_nocache", "fresh_url_hook",
        "idempotent_hook", "fresh_url_hook_cold")
BASELINE_ARMS = ("base:fresh_url", "base:fresh_cached", "base:idempotent")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def apply_args(fleet: DemoFleet, host: str) -> dict[str, t.Any]:
    """The module arguments roles/rollout/tasks/apply.yml gives patch_apply in rollout_stage=url (prod: signed)."""
    with open(fleet.manifest(), encoding="utf-8") as handle:
        patch = yaml.safe_load(handle)
    with open(fleet.allowed_signers, encoding="utf-8") as handle:
        signers = handle.read()
    hostvars = fleet.inventory_hosts()[host]
    artifact = patch["artifact"]
    return {
        "root": hostvars["fleetpatch_host_root"], "service": patch["service"], "version": patch["target_version"],
        "sha256": artifact["sha256"], "artifact_url": artifact["url"], "artifact_size": artifact["size"],
        "signature": artifact["signature"], "allowed_signers": signers, "require_signature": True,
        "affected_versions": patch.get("affected_versions", []), "allow_downgrade": False,
        "max_artifact_bytes": 2147483648, "max_time": 900, "min_throughput": 1024, "throughput_window": 30,
        "patch_id": patch["patch_id"], "restart_command": hostvars["fleetpatch_restart_command"],
        "health_url": hostvars["fleetpatch_health_url"],
    }


def payload(fleet: DemoFleet, host: str, module: str, args: dict[str, t.Any], remote_tmp: str, *, collections: str | None = None) -> str:
    """Run module once on host through ansible (ad hoc) and return the AnsiballZ file it left behind (the collection
    from the collections path given, else this checkout's)."""
    os.makedirs(remote_tmp)
    env = dict(os.environ, **envvars(ANSIBLE_KEEP_REMOTE_FILES="1", ANSIBLE_REMOTE_TMP=remote_tmp))
    if collections:
        env["ANSIBLE_COLLECTIONS_PATH"] = collections
    command = [os.path.join(os.path.dirname(sys.executable), "ansible"), host, "-i", fleet.inventory, "-m", module]
    if args:
        command += ["-a", json.dumps(args)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{module} failed on {host}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    found = glob.glob(os.path.join(remote_tmp, "ansible-tmp-*", "AnsiballZ_*.py"))
    if len(found) != 1:
        raise SystemExit(f"expected one AnsiballZ payload under {remote_tmp}, found {found}")
    return found[0]


def execute(path: str, *extra: str, env: dict[str, str] | None = None) -> tuple[dict[str, t.Any], float, str]:
    """(module result, CPU seconds, stderr) of one execution of an AnsiballZ payload."""
    cpu0 = children_cpu()
    proc = subprocess.run([sys.executable, *extra, path], capture_output=True, text=True, check=False, cwd=os.path.dirname(path), env=env)
    cpu = children_cpu() - cpu0
    try:
        result = json.loads(proc.stdout)
    except ValueError as exc:
        raise SystemExit(f"{path} printed no JSON result: {proc.stdout[-2000:]} {proc.stderr[-2000:]}") from exc
    if result.get("failed"):
        raise SystemExit(f"{path} failed: {result.get('msg')}")
    return result, cpu, proc.stderr


class Host:
    """One demo node reset to a known state before an arm runs."""

    def __init__(self, root: str, snapshot: str, sha256: str, artifact: str) -> None:
        self.root, self.snapshot, self.sha256, self.artifact = root, snapshot, sha256, artifact
        self.bytecode = os.path.join(os.path.dirname(snapshot), "bytecode")  # the host's bytecode cache

    def reset(self, *, cached: bool) -> None:
        shutil.rmtree(self.root)
        shutil.copytree(self.snapshot, self.root, symlinks=True)
        if cached:
            cache = os.path.join(self.root, "cache", "sha256")
            os.makedirs(cache, exist_ok=True)
            shutil.copyfile(self.artifact, os.path.join(cache, self.sha256))


def put_hook(host: Host) -> str:
    """The startup hook as the action plugin leaves it in a new remote tmp dir (no bytecode of it yet): its directory."""
    directory = os.path.join(os.path.dirname(host.snapshot), "hook-tmp")
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory, mode=0o700)
    shutil.copyfile(_host_startup.hook_source_path(), os.path.join(directory, _host_startup.FILE_NAME))
    return directory


def run_arm(arm: str, host: Host, paths: dict[str, str], *extra: str) -> tuple[float, str]:
    """One execution of arm (paths: "apply", "ping" and, with a baseline, "base:apply" payloads): CPU seconds, stderr."""
    env = dict(os.environ, FLEETPATCH_BYTECODE_CACHE_DIR=host.bytecode)
    ping_path = paths["ping"]
    prefix, _sep, arm = arm.rpartition(":")
    apply_path = paths[f"{prefix}:apply" if prefix else "copy" if arm == "fresh_copy" else "apply"]
    if arm == "ping":
        _result, cpu, err = execute(ping_path, *extra, env=env)
        return cpu, err
    if arm.endswith("_hook") or arm.endswith("_hook_cold"):
        env["PYTHONPATH"] = put_hook(host)
    if arm.endswith("_cold"):
        env["FLEETPATCH_BYTECODE_CACHE_DIR"] = host.bytecode + "-cold"
        shutil.rmtree(env["FLEETPATCH_BYTECODE_CACHE_DIR"], ignore_errors=True)
    if arm == "fresh_url_nocache":
        env["FLEETPATCH_BYTECODE_CACHE"] = "off"
    if not arm.startswith("idempotent"):
        host.reset(cached=arm == "fresh_cached")
    result, cpu, err = execute(apply_path, *extra, env=env)
    expected = "download artifact" in result["actions"] if arm.startswith("fresh_url") or arm == "fresh_copy" else None
    if result["changed"] is arm.startswith("idempotent") or (expected is not None and not expected) or not result["health"]["ok"]:
        raise SystemExit(f"{arm}: unexpected result {result}")
    return cpu, err


def import_costs(text: str) -> dict[str, tuple[int, int]]:
    """module -> (self us, cumulative us) from -X importtime output."""
    costs = {}
    for line in text.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cumulative, name = line[len("import time:"):].split("|", 2)
        costs[name.strip()] = (int(self_us), int(cumulative))
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--top", type=int, default=15, help="imports listed per arm (self time beyond ping's)")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--baseline", help="a checkout of another commit: its patch_apply runs interleaved as base: arms")
    options = parser.parse_args()

    base = tempfile.mkdtemp(prefix="fleetpatch-apply-bench-")
    fleet = DemoFleet(base, demo_fleet_regions=["eu-west"], demo_fleet_tenants=["t1"], demo_fleet_segments=["web"],
                      demo_fleet_hosts_per_cell=1)
    fleet.create()
    try:
        node = fleet.nodes()[0]
        args = apply_args(fleet, node)
        with open(fleet.manifest(), encoding="utf-8") as handle:
            artifact = yaml.safe_load(handle)["artifact"]
        host = Host(args["root"], os.path.join(base, "snapshot"), args["sha256"], artifact["path"])
        shutil.copytree(args["root"], host.snapshot, symlinks=True)
        paths = {"apply": payload(fleet, node, "fleetpatch.rollout.patch_apply", args, os.path.join(base, "remote-apply")),
                 "ping": payload(fleet, node, "ansible.builtin.ping", {}, os.path.join(base, "remote-ping"))}
        # the copy stage's module arguments: the artifact where the action's put_file left it (it stays: every
        # execution reads it again)
        transferred = os.path.join(base, "transferred-artifact")
        shutil.copyfile(artifact["path"], transferred)
        host.reset(cached=False)
        paths["copy"] = payload(fleet, node, "fleetpatch.rollout.patch_apply", dict(args, artifact_url="file://" + transferred),
                                os.path.join(base, "remote-copy"))
        arms = ARMS
        if options.baseline:
            host.reset(cached=False)
            ctl = os.path.join(os.path.dirname(args["restart_command"][-3]), "fleetctl-baseline.py")  # next to bin/fleetctl.py
            shutil.copyfile(os.path.join(options.baseline, "collections", "ansible_collections", "fleetpatch", "demo", "roles",
                                         "demo_fleet", "files", "fleetctl.py"), ctl)
            base_args = dict(args, restart_command=[args["restart_command"][0], ctl, "restart", node])
            paths["base:apply"] = payload(fleet, node, "fleetpatch.rollout.patch_apply", base_args, os.path.join(base, "remote-base"),
                                          collections=os.path.join(os.path.abspath(options.baseline), "collections"))
            arms = ARMS + BASELINE_ARMS
        host.reset(cached=False)

        samples: dict[str, list[float]] = {arm: [] for arm in arms}
        for arm in ("fresh_url", "fresh_url_hook", "ping", *(("base:fresh_url",) if options.baseline else ())):  # fills the bytecode cache:
            run_arm(arm, host, paths)  # the rounds measure a warm one (cold has its own arm)
        started = time.monotonic()
        for _round in range(options.rounds):
            for arm in arms:
                samples[arm].append(run_arm(arm, host, paths)[0])
        imports = {arm: import_costs(run_arm(arm, host, paths, "-X", "importtime")[1]) for arm in arms}

        ping = statistics.median(samples["ping"])
        figures: dict[str, t.Any] = {"rounds": options.rounds, "seconds": round(time.monotonic() - started, 1), "arms": {}}
        print(f"one execution on demo host {node}, CPU seconds (module process and what it waits for), {options.rounds} rounds")
        print(f"{'arm':<20}{'median':>9}{'min':>9}{'x ping':>9}{'imports ms':>12}")
        for arm in arms:
            median = statistics.median(samples[arm])
            imported_ms = sum(self_us for self_us, _cum in imports[arm].values()) / 1000
            figures["arms"][arm] = {"median_cpu": round(median, 4), "min_cpu": round(min(samples[arm]), 4),
                                    "ratio_to_ping": round(median / ping, 2), "import_self_ms": round(imported_ms, 1)}
            print(f"{arm:<20}{median:>9.3f}{min(samples[arm]):>9.3f}{median / ping:>9.2f}{imported_ms:>12.1f}")
        for arm in (arm for arm in arms if arm != "ping"):
            beyond = {name: cost for name, cost in imports[arm].items() if name not in imports["ping"]}
            top = sorted(beyond.items(), key=lambda item: -item[1][0])[:options.top]
            total = sum(self_us for self_us, _cum in beyond.values()) / 1000
            print(f"\n{arm}: {len(beyond)} imports beyond ping's, {total:.1f} ms self; top by self time (ms self / cumulative):")
            for name, (self_us, cumulative) in top:
                print(f"  {self_us / 1000:7.1f} {cumulative / 1000:7.1f}  {name}")
            figures["arms"][arm]["imports_beyond_ping"] = {name: round(cost[0] / 1000, 2) for name, cost in top}
        if options.json:
            with open(options.json, "w", encoding="utf-8") as handle:
                json.dump(figures, handle, indent=2)
    finally:
        fleet.teardown()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
