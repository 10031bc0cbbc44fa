"""fleetpatch.rollout.patch_apply's action plugin, what it reads instead of what the task templated per host: the hosts an
attempt skips (skip_var) are skipped with nothing run, the stage comes from the host's variable (stage_var), and the plan
host's variables are read from the variable manager's fact cache exactly as hostvars.raw_get would give them, without
computing localhost's whole variable set."""

from __future__ import annotations

import typing as t

import pytest
from ansible._internal._datatag._tags import TrustedAsTemplate
from ansible.errors import AnsibleActionFail
from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
from ansible.vars.hostvars import HostVars
from ansible.vars.manager import VariableManager

from ansible_collections.fleetpatch.rollout.plugins.action import patch_apply
from conftest import make_action
from test_patch_apply_plan import RAW_URLS, action_for, host_vars, play_vars, plugin_args

PLAN = {"patch": {"service": "myapp", "target_version": "1.0.1", "patch_id": "FP-1", "artifact": {"sha256": "a" * 64}}}
URLS = {"url": "http://deploy:hunter22@artifacts.invalid/myapp-1.0.1.tar.gz", "delta_url": None}
WINDOW = {"stop": False, "skip_hosts": ["node2"]}


def run_for(host: str, window: t.Any = "the window", **args: t.Any) -> tuple[dict[str, t.Any], list[dict[str, t.Any]]]:
    """The plugin's result for one host of the batch (the change window's result WINDOW unless given), and the module
    executions it asked for."""
    task_vars = {"inventory_hostname": host, "__rollout_window": dict(WINDOW) if window == "the window" else window, "fleetpatch_host_root": f"/srv/{host}",
                 "hostvars": {"localhost": {"__rollout_plan": PLAN}}}
    action = make_action("patch_apply", {"plan_var": "__rollout_plan", "skip_var": "__rollout_window", "state": "rollback", **args})
    calls: list[dict[str, t.Any]] = []

    def execute_module(*, module_name: str, module_args: dict[str, t.Any], task_vars: dict[str, t.Any]) -> dict[str, t.Any]:
        calls.append(module_args)
        return {"changed": True}

    action._execute_module = execute_module  # pylint: disable=protected-access
    return action.run(task_vars=task_vars), calls


def test_a_host_the_attempt_skips_is_skipped_with_nothing_run() -> None:
    result, calls = run_for("node2")
    assert calls == []
    assert result == {"changed": False, "skipped": True, "skip_reason": "this attempt skips the host (__rollout_window.skip_hosts)"}


def test_every_other_host_runs_the_module_with_the_plan_arguments() -> None:
    result, calls = run_for("node1")
    assert result == {"changed": True}
    assert calls == [{"service": "myapp", "version": "1.0.1", "sha256": "a" * 64, "patch_id": "FP-1", "state": "rollback", "root": "/srv/node1"}]
    # skip_var is the plugin's, never a module argument
    assert "skip_var" not in calls[0]


@pytest.mark.parametrize(("window", "skip_var", "message"), [
    (None, "__rollout_window", "__rollout_window is not the registered result of fleetpatch.rollout.change_window (no skip_hosts)"),
    ({"stop": False}, "__rollout_window", "__rollout_window is not the registered result of fleetpatch.rollout.change_window (no skip_hosts)"),
    (WINDOW, "", "skip_var must be the name of a variable of this host"),
])
def test_a_skip_var_that_is_not_a_window_result_fails_before_the_host_is_touched(window: t.Any, skip_var: str, message: str) -> None:
    with pytest.raises(AnsibleActionFail) as raised:
        run_for("node1", window, skip_var=skip_var)
    assert str(raised.value.message) == message


@pytest.fixture(name="manager")
def fixture_manager(tmp_path: t.Any) -> VariableManager:
    """A real variable manager over an inventory of two hosts, localhost implicit, with the plan and URLs set as a play sets them."""
    inventory_file = tmp_path / "hosts.ini"
    inventory_file.write_text("node1\nnode2\n[all:vars]\n__rollout_artifact_urls=from-inventory\n", encoding="utf-8")
    loader = DataLoader()
    inventory = InventoryManager(loader=loader, sources=[str(inventory_file)])
    manager = VariableManager(loader=loader, inventory=inventory)
    HostVars(inventory=inventory, variable_manager=manager, loader=loader)
    # register (the plan result) and a no_log set_fact (the raw URLs) both land in the non-persistent fact cache
    manager.set_nonpersistent_facts("localhost", {"__rollout_plan": PLAN, "__rollout_artifact_urls": URLS})
    return manager


def test_plan_host_variables_are_raw_gets_without_computing_localhost(manager: VariableManager, monkeypatch: pytest.MonkeyPatch) -> None:
    hostvars = manager._hostvars  # pylint: disable=protected-access
    names = ["__rollout_plan", "__rollout_artifact_urls"]
    expected = {name: hostvars.raw_get("localhost")[name] for name in names}
    assert expected == {"__rollout_plan": PLAN, "__rollout_artifact_urls": URLS}
    calls: list[t.Any] = []
    original = manager.get_vars
    monkeypatch.setattr(manager, "get_vars", lambda *args, **kwargs: calls.append(kwargs) or original(*args, **kwargs))
    assert patch_apply._planner_vars({"hostvars": hostvars}, names) == expected  # pylint: disable=protected-access
    assert calls == []


def test_an_extra_variable_wins_as_in_raw_get(manager: VariableManager) -> None:
    manager._extra_vars = {"__rollout_artifact_urls": {"url": "file:///extra", "delta_url": None}}  # pylint: disable=protected-access
    hostvars = manager._hostvars  # pylint: disable=protected-access
    names = ["__rollout_plan", "__rollout_artifact_urls"]
    found = patch_apply._planner_vars({"hostvars": hostvars}, names)  # pylint: disable=protected-access
    assert found == {name: hostvars.raw_get("localhost")[name] for name in names}
    assert found["__rollout_artifact_urls"]["url"] == "file:///extra"


def test_a_name_the_fact_cache_lacks_takes_raw_get(manager: VariableManager) -> None:
    manager._nonpersistent_fact_cache["localhost"].pop("__rollout_artifact_urls")  # pylint: disable=protected-access
    hostvars = manager._hostvars  # pylint: disable=protected-access
    found = patch_apply._planner_vars({"hostvars": hostvars}, ["__rollout_plan", "__rollout_artifact_urls"])  # pylint: disable=protected-access
    # the inventory's value, which only raw_get computes
    assert found["__rollout_artifact_urls"] == "from-inventory" and found["__rollout_plan"] == PLAN


@pytest.mark.parametrize(("host_stage", "stage", "expected"), [
    # the role's form: stage_var names rollout_stage, templated as the task's "{{ rollout_stage }}" was
    ("prestaged", None, "prestaged"),
    (TrustedAsTemplate().tag("{{ 'pre' ~ 'staged' }}"), None, "prestaged"),
    ("url", None, "url"),
    # an explicit stage wins; an undefined variable means the default (url)
    ("prestaged", "url", "url"),
    (None, None, "url"),
])
def test_stage_var_is_the_stage_the_task_templated(planned: dict[str, t.Any], host_stage: t.Any, stage: str | None, expected: str) -> None:
    task_vars = play_vars(planned, dict(RAW_URLS), "url", host_vars())
    task_vars.pop("rollout_stage")
    if host_stage is not None:
        task_vars["rollout_stage"] = host_stage
    args = {"plan_var": "__rollout_plan", "urls_var": "__rollout_artifact_urls", "stage_var": "rollout_stage", **({"stage": stage} if stage else {})}
    built = plugin_args(args, task_vars)
    reference = plugin_args({"plan_var": "__rollout_plan", "urls_var": "__rollout_artifact_urls", "stage": expected}, task_vars)
    assert built == reference
    # the url stage hands over the raw URL, the prestaged one none
    assert ("artifact_url" in built) is (expected == "url")


def test_a_stage_var_that_is_not_a_name_is_refused(planned: dict[str, t.Any]) -> None:
    task_vars = play_vars(planned, dict(RAW_URLS), "url", host_vars())
    with pytest.raises(AnsibleActionFail) as raised:
        action_for({"plan_var": "__rollout_plan", "stage_var": ""}, task_vars).run(task_vars=task_vars)
    assert str(raised.value.message) == "stage_var must be the name of a variable of this host"
