"""Fakes for the action plugins' unit tests: a task, a connection and real ansible-core loader objects, and a planned run.

Every test builds a plugin's run arguments through `run_args` (the run id, and the plan result as data) or, for
prestage_report, `run_arg`.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import typing as t
import uuid

import pytest
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store import open_store

PLUGINS = "ansible_collections.fleetpatch.rollout.plugins.action"

MANIFEST: dict[str, t.Any] = {
    "patch_id": "FP-UNIT-1",
    "service": "myapp",
    "target_version": "1.0.1",
    "change_type": "scheduled",
    "classification": "functional",
    "justification": "fix the report export",
    "affected_versions": ["1.0.0"],
    "regression_risk": "low",
    "requested_by": "alice",
    "approvals": [{"by": "bob"}],
    "artifact": {"url": "http://deploy:hunter22@artifacts.invalid/myapp-1.0.1.tar.gz", "sha256": "a" * 64},
}
# an always-open calendar: the unit tests do not depend on the day they run
POLICY: dict[str, t.Any] = {"canary": {"size": 1}, "waves": ["100%"], "max_concurrency": 2}


@dataclasses.dataclass
class FakeShell:
    tmpdir: str | None = "/nonexistent-remote-tmp"

    @staticmethod
    def env_prefix(**environment: t.Any) -> str:
        return " ".join(f"{name}={value}" for name, value in environment.items())


@dataclasses.dataclass
class FakeConnection:
    _shell: FakeShell = dataclasses.field(default_factory=FakeShell)


@dataclasses.dataclass
class FakeTask:
    """What ActionBase.run and ControllerAction read from a task."""

    args: dict[str, t.Any]
    action: str = "fleetpatch.rollout.unit"
    check_mode: bool = False
    async_val: int = 0
    diff: bool = False
    environment: list[dict[str, t.Any]] = dataclasses.field(default_factory=list)
    _uuid: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)

    def get_search_path(self) -> list[str]:
        return []


def make_action(name: str, args: dict[str, t.Any], *, check_mode: bool = False) -> t.Any:
    """The ActionModule of plugins/action/<name>.py for one task with these arguments."""
    module = importlib.import_module(f"{PLUGINS}.{name}")
    loader = DataLoader()
    task = FakeTask(args=copy.deepcopy(args), action=f"fleetpatch.rollout.{name}", check_mode=check_mode)
    return module.ActionModule(task, FakeConnection(), None, loader, Templar(loader=loader), None)


def run_action(name: str, args: dict[str, t.Any], task_vars: dict[str, t.Any] | None = None, *, check_mode: bool = False) -> dict[str, t.Any]:
    return make_action(name, args, check_mode=check_mode).run(task_vars=task_vars or {})


def run_arg(run: dict[str, t.Any]) -> t.Any:
    """The `run` option of prestage_report (the registered plan result)."""
    return run


def run_args(run: dict[str, t.Any]) -> dict[str, t.Any]:
    """How change_window, wave_gate, rollout_finish, synthetic_checks and registry_record find their run: its id (the
    run's state is loaded from the store) and the plan's immutable outputs (read as data)."""
    return {"run_id": run["run_id"], "plan": run}


def hostvars(hosts: t.Iterable[str], root: str, **extra: t.Any) -> dict[str, dict[str, t.Any]]:
    """Inventory variables of a small fleet: two regions, one tenant, one segment, a non-production environment."""
    out = {}
    for index, host in enumerate(hosts):
        out[host] = {"fleet_region": "eu" if index % 2 else "us", "fleet_tenant": "acme", "fleet_segment": "web",
                     "fleet_environment": "staging", "fleetpatch_host_root": f"{root}/{host}", **extra.get(host, {})}
    return out


HOSTS = ["node1", "node2", "node3", "node4"]


@pytest.fixture
def no_event_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """Actions outside a playbook: no event callback runs, and the plan is told that knowingly."""
    monkeypatch.setenv("FLEETPATCH_EVENTS_REQUIRED", "false")
    for name in ("FLEETPATCH_EVENTS_ACTIVE", "FLEETPATCH_CORRELATION_ID", "FLEETPATCH_STATE_DIR"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fleet(tmp_path: t.Any) -> dict[str, t.Any]:
    """task_vars of a four-host fleet, and its state dir."""
    state_dir = str(tmp_path / "state")
    return {"state_dir": state_dir, "task_vars": {"hostvars": hostvars(HOSTS, str(tmp_path / "hosts")), "ansible_play_hosts_all": HOSTS}}


def plan_args(state_dir: str, **changes: t.Any) -> dict[str, t.Any]:
    """rollout_plan's arguments for the unit fleet."""
    return {"manifest": copy.deepcopy(MANIFEST), "targets": list(HOSTS), "policy": copy.deepcopy(POLICY), "state_dir": state_dir,
            "clock": "2026-03-11T05:00:00Z", **changes}


def stored_run(run: dict[str, t.Any]) -> dict[str, t.Any] | None:
    """The run document as the run's store holds it (a planned run's result names its state dir and backend)."""
    return open_store(run["state_dir"], backend=run.get("state_backend")).load_run(run["run_id"])


def stored_lock(run: dict[str, t.Any]) -> dict[str, t.Any] | None:
    """The run's lock as its store holds it, or None."""
    return open_store(run["state_dir"], backend=run.get("state_backend")).read_lock(run["run_id"])


@pytest.fixture
def planned(fleet: dict[str, t.Any], no_event_log: None) -> dict[str, t.Any]:
    """A run planned (and locked) in the fleet's state dir: the registered result of fleetpatch.rollout.rollout_plan."""
    result = run_action("rollout_plan", plan_args(fleet["state_dir"]), fleet["task_vars"])
    assert not result.get("failed"), result.get("msg")
    return result
