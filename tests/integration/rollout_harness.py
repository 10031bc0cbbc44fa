"""Drive fleetpatch playbooks on a real demo fleet through ansible-runner, and read what they left behind."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import sys
import tempfile
import typing as t
import urllib.request

import ansible_runner

from ansible_collections.fleetpatch.demo.plugins.module_utils._demo_fleet import busy_endpoints
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._event_verify import verify_event_file
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._registry import verify_all
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store import Store, open_store

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAYBOOKS = os.path.join(REPO_ROOT, "playbooks")
# The demo fleet is its own collection (fleetpatch.demo), kept out of the fleetpatch.rollout tarball; its playbooks are
# absolute paths, which run_playbook passes through unchanged (os.path.join keeps an absolute second part).
DEMO_COLLECTION = os.path.join(REPO_ROOT, "collections", "ansible_collections", "fleetpatch", "demo")
DEMO_FLEET_PLAYBOOK = os.path.join(DEMO_COLLECTION, "playbooks", "fleet.yml")
DEMO_TEARDOWN_PLAYBOOK = os.path.join(DEMO_COLLECTION, "playbooks", "teardown.yml")
ANSIBLE_CFG = os.path.join(REPO_ROOT, "ansible.cfg")
_SUBNETS = itertools.count(1)
# ansible-runner finds ansible-playbook on PATH: use the one installed beside this interpreter (the venv).
_BIN = os.path.dirname(sys.executable)
if _BIN not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = _BIN + os.pathsep + os.environ.get("PATH", "")


def envvars(**extra: str) -> dict[str, str]:
    env = {
        "ANSIBLE_CONFIG": ANSIBLE_CFG,
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_COLLECTIONS_PATH": os.path.join(REPO_ROOT, "collections"),
    }
    env.update(extra)
    return env


class RunResult:
    def __init__(self, runner: t.Any, private_dir: str) -> None:
        self.runner = runner
        self.status = runner.status
        self.rc = runner.rc
        self.events = list(runner.events)
        self.stdout = runner.stdout.read() if runner.stdout else ""
        self.private_dir = private_dir

    def task_results(self, action: str) -> dict[str, dict[str, t.Any]]:
        """Final per-host results of tasks whose action ends with `action` (last one wins)."""
        found: dict[str, dict[str, t.Any]] = {}
        for event in self.events:
            data = event.get("event_data", {})
            if event.get("event") in ("runner_on_ok", "runner_on_failed", "runner_on_unreachable") and str(
                data.get("task_action", "")
            ).endswith(action):
                found[data["host"]] = dict(data.get("res", {}), _event=event["event"])
        return found


def run_playbook(
    playbook: str,
    *,
    inventory: str | None = None,
    extravars: dict[str, t.Any] | None = None,
    cmdline: str | None = None,
    cancel_callback: t.Callable[[], bool] | None = None,
    env: dict[str, str] | None = None,
) -> RunResult:
    private_dir = tempfile.mkdtemp(prefix="fleetpatch-runner-")
    kwargs: dict[str, t.Any] = {
        "private_data_dir": private_dir,
        "playbook": os.path.join(PLAYBOOKS, playbook),
        "extravars": extravars or {},
        "envvars": envvars(**(env or {})),
        "quiet": True,
        "settings": {"suppress_env_files": True},
    }
    if inventory:
        kwargs["inventory"] = inventory
    if cmdline:
        kwargs["cmdline"] = cmdline
    if cancel_callback:
        kwargs["cancel_callback"] = cancel_callback
        # ansible-runner asks cancel_callback only when its pexpect wait times out (5 s by default).
        kwargs["settings"]["pexpect_timeout"] = 0.1
    runner = ansible_runner.run(**kwargs)
    result = RunResult(runner, private_dir)
    shutil.rmtree(private_dir, ignore_errors=True)
    return result


def _free_subnet_index() -> int:
    """The next subnet index whose origin and first host address:port are free: a demo fleet left running by another
    process (bin/demo, a benchmark, another test run) must not make this one fail to bind."""
    for _attempt in range(200):
        index = next(_SUBNETS) + (os.getpid() % 50) * 4
        prefix = f"127.{90 + index // 250}.{index % 250}"
        if not busy_endpoints([(f"{prefix}.1", 30000 + index), (f"{prefix}.2", 20000 + index)]):
            return index
    raise RuntimeError("no free loopback subnet for a demo fleet after 200 tries")


class DemoFleet:
    """One demo fleet on its own loopback subnet and ports, built and torn down by the collection's playbooks."""

    def __init__(self, base: str, **params: t.Any) -> None:
        index = _free_subnet_index()
        self.path = os.path.join(base, "fleet")
        self.state_dir = os.path.join(base, "controller")
        self.params = {
            "demo_fleet_dir": self.path,
            "demo_fleet_cidr": f"127.{90 + index // 250}.{index % 250}.0/24",
            "demo_fleet_port": 20000 + index,
            "demo_fleet_origin_port": 30000 + index,
        }
        self.params.update(params)

    @property
    def inventory(self) -> str:
        return os.path.join(self.path, "inventory", "demo.fleet.yml")

    @property
    def allowed_signers(self) -> str:
        """The allowed_signers file that trusts the key the demo signs its artifacts with."""
        return os.path.join(self.path, "keys", "allowed_signers")

    def trusting(self, policy: dict[str, t.Any] | None) -> dict[str, t.Any]:
        """policy, with policy.artifacts trusting the demo's signing key unless the test set policy.artifacts itself: the
        demo's environment (prod) requires signed artifacts, as a production fleet's would."""
        policy = dict(policy or {})
        policy.setdefault("artifacts", {"allowed_signers_file": self.allowed_signers})
        return policy

    def manifest(self, version: str = "1.0.1") -> str:
        return os.path.join(self.path, "patches", f"myapp-{version}.yml")

    def create(self, **overrides: t.Any) -> RunResult:
        self.params.update(overrides)
        result = run_playbook(DEMO_FLEET_PLAYBOOK, extravars=self.params)
        assert result.status == "successful", result.stdout[-4000:]
        return result

    def teardown(self) -> None:
        run_playbook(DEMO_TEARDOWN_PLAYBOOK, extravars={"demo_fleet_dir": self.path})

    def fleet(self) -> dict[str, t.Any]:
        with open(os.path.join(self.path, "fleet.json"), encoding="utf-8") as handle:
            return json.load(handle)

    def inventory_hosts(self) -> dict[str, dict[str, t.Any]]:
        import yaml  # noqa: PLC0415 - pyyaml ships with ansible-core

        with open(self.inventory, encoding="utf-8") as handle:
            return yaml.safe_load(handle)["hosts"]

    def nodes(self) -> list[str]:
        return sorted(name for name, hv in self.inventory_hosts().items() if hv.get("fleet_role", "node") == "node")

    def host_root(self, host: str) -> str:
        return self.inventory_hosts()[host]["fleetpatch_host_root"]

    def host_manifest(self, host: str, service: str = "myapp") -> dict[str, t.Any]:
        with open(os.path.join(self.host_root(host), "state", f"{service}.manifest.json"), encoding="utf-8") as handle:
            return json.load(handle)

    def current_version(self, host: str, service: str = "myapp") -> str:
        with open(os.path.join(self.host_root(host), "apps", service, "current", "VERSION"), encoding="utf-8") as handle:
            return handle.read().strip()

    def releases(self, host: str, service: str = "myapp") -> list[str]:
        return sorted(os.listdir(os.path.join(self.host_root(host), "apps", service, "releases")))

    def health(self, host: str) -> dict[str, t.Any]:
        url = self.inventory_hosts()[host]["fleetpatch_health_url"]
        try:
            with urllib.request.urlopen(url, timeout=5) as response:  # loopback only
                return dict(json.load(response), http_status=response.status)
        except urllib.error.HTTPError as exc:
            return dict(json.load(exc), http_status=exc.code)

    def versions(self) -> dict[str, str]:
        return {host: self.host_manifest(host)["version"] for host in self.nodes()}

    def run_dir(self, run_id: str) -> str:
        return os.path.join(self.state_dir, "runs", run_id)

    def store(self, backend: str | None = None) -> Store:
        """The run-state store of this fleet's controller (embedded: <state dir>/fleetpatch.db): tests read runs and
        plant locks through it, never through files. Reading a store that was never written creates nothing."""
        return open_store(self.state_dir, backend=backend)

    def run_state(self, run_id: str) -> dict[str, t.Any]:
        """The run document with every host's outcome, as the store holds it ({} before the run was planned)."""
        return self.store().load_run(run_id) or {}

    def run_lock(self, run_id: str) -> dict[str, t.Any] | None:
        return self.store().read_lock(run_id)

    def events(self, run_id: str) -> list[dict[str, t.Any]]:
        path = os.path.join(self.run_dir(run_id), "events.jsonl")
        if not os.path.exists(path):
            return []
        events = []
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    events.append(json.loads(line))
                except ValueError:
                    continue  # a torn line (a killed run); the event log's verifier reports those
        return events

    def assert_records_verify(self, run_id: str) -> None:
        """Nothing was lost: the run's event log is a whole chain and the registry with every event file it knows verifies."""
        report = verify_event_file(os.path.join(self.run_dir(run_id), "events.jsonl"))
        assert report.ok and report.lines > 0, report.findings
        state = verify_all(self.state_dir)
        assert state["ok"], state["findings"]

    def summary(self, run_id: str) -> dict[str, t.Any]:
        with open(os.path.join(self.run_dir(run_id), "summary.json"), encoding="utf-8") as handle:
            return json.load(handle)

    def rollout(self, *, policy: dict[str, t.Any] | None = None, version: str = "1.0.1", cmdline: str | None = None,
                cancel_callback: t.Callable[[], bool] | None = None, env: dict[str, str] | None = None,
                playbook: str = "rollout.yml", **extra: t.Any) -> RunResult:
        """Run playbooks/rollout.yml (or another playbook, by absolute path) with env added to the environment."""
        extravars = {
            "rollout_patch_manifest": self.manifest(version),
            "rollout_state_dir": self.state_dir,
            "rollout_policy": self.trusting(policy),
        }
        extravars.update(extra)
        return run_playbook(playbook, inventory=self.inventory, extravars=extravars, cmdline=cmdline, cancel_callback=cancel_callback,
                            env=env)


def tree_snapshot(*roots: str) -> dict[str, str]:
    """Path -> content digest (or link target) of every entry under roots; equal snapshots mean nothing changed."""
    snapshot: dict[str, str] = {}
    for root in roots:
        for directory, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                path = os.path.join(directory, name)
                if os.path.islink(path):
                    snapshot[path] = "link:" + os.readlink(path)
                elif os.path.isfile(path):
                    if "/log/" in path or path.endswith(".pid"):
                        continue
                    with open(path, "rb") as handle:
                        snapshot[path] = hashlib.sha256(handle.read()).hexdigest()
                else:
                    snapshot[path] = "dir"
    return snapshot
