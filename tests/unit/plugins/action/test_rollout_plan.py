"""fleetpatch.rollout.rollout_plan: the plan, its files, the lock, and the refusals before any host is touched."""

from __future__ import annotations

import json
import os
import typing as t

import pytest
from ansible.errors import AnsibleActionFail
from ansible.inventory.manager import split_host_pattern
from conftest import HOSTS, MANIFEST, POLICY, plan_args, run_action, stored_lock, stored_run

from ansible_collections.fleetpatch.rollout.plugins.action.rollout_plan import names_one_host


def test_plan_writes_plan_state_lock_and_masks_credentials(fleet: dict[str, t.Any], no_event_log: None) -> None:
    result = run_action("rollout_plan", plan_args(fleet["state_dir"]), fleet["task_vars"])
    assert not result.get("failed"), result.get("msg")
    assert result["run_id"] == "FP-UNIT-1"
    assert sorted(result["host_order"]) == HOSTS
    assert sum(result["serial"]) == len(HOSTS)
    run_dir = os.path.join(fleet["state_dir"], "runs", "FP-UNIT-1")
    # the run document and lock are the store's (embedded: fleetpatch.db); plan.json is the one file written
    assert result["run_dir"] == run_dir and result["written"] == [os.path.join(run_dir, "plan.json")]
    assert result["state_backend"] == "embedded" and os.listdir(run_dir) == ["plan.json"]
    with open(os.path.join(run_dir, "plan.json"), encoding="utf-8") as handle:
        assert json.load(handle)["fingerprint"] == result["plan"]["fingerprint"]
    state = stored_run(result)
    assert state["status"] == "running" and len(state["attempts"]) == 1 and not state["attempts"][0]["resumed"]
    assert stored_lock(result)["hosts"] == sorted(HOSTS)
    assert "hunter22" not in json.dumps(result["patch"])
    assert [event["event"] for event in result["fleetpatch_events"]][:3] == ["run.started", "plan.compiled", "change.classified"]


def test_second_plan_resumes_the_same_run(fleet: dict[str, t.Any], planned: dict[str, t.Any]) -> None:
    again = run_action("rollout_plan", plan_args(fleet["state_dir"]), fleet["task_vars"])
    assert not again.get("failed"), again.get("msg")
    assert again["plan"]["fingerprint"] == planned["plan"]["fingerprint"]
    attempts = stored_run(planned)["attempts"]
    assert [attempt["resumed"] for attempt in attempts] == [False, True]


def test_preview_writes_nothing(fleet: dict[str, t.Any], no_event_log: None) -> None:
    result = run_action("rollout_plan", plan_args(fleet["state_dir"], preview=True), fleet["task_vars"])
    assert result["preview"] is True and result["written"] == [] and result["run_dir"] is None
    assert not os.path.exists(fleet["state_dir"])


def test_check_mode_is_a_preview(fleet: dict[str, t.Any], no_event_log: None) -> None:
    result = run_action("rollout_plan", plan_args(fleet["state_dir"]), fleet["task_vars"], check_mode=True)
    assert result["preview"] is True and not os.path.exists(fleet["state_dir"])


def test_refuses_without_event_log(fleet: dict[str, t.Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEETPATCH_EVENTS_REQUIRED", raising=False)
    monkeypatch.delenv("FLEETPATCH_EVENTS_ACTIVE", raising=False)
    result = run_action("rollout_plan", plan_args(fleet["state_dir"]), fleet["task_vars"])
    assert result["failed"] and "the event callback fleetpatch.rollout.events is not enabled" in result["msg"]
    assert not os.path.exists(fleet["state_dir"])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"targets": []}, "no target hosts"),
        ({"manifest": 42}, "manifest must be a path to a patch manifest file or a mapping"),
        ({"manifest": "/nonexistent/patch.yml"}, "patch manifest /nonexistent/patch.yml does not exist"),
        ({"manifest": dict(MANIFEST, approvals=[{"by": "alice"}])}, "alice requested this patch and cannot approve it"),
        # the batch play names the planned hosts as host patterns: a name that reads as other patterns is refused
        ({"targets": ["node1", "web,db"]}, "targets[1]: host 'web,db' cannot be named in a play's hosts"),
        ({"targets": ["!node1"]}, "targets[0]: host '!node1' cannot be named in a play's hosts"),
        ({"targets": ["&node1"]}, "targets[0]: host '&node1' cannot be named in a play's hosts"),
        ({"targets": ["web:db"]}, "targets[0]: host 'web:db' cannot be named in a play's hosts"),
    ],
)
def test_bad_input_fails_with_its_reason(fleet: dict[str, t.Any], no_event_log: None, changes: dict[str, t.Any], message: str) -> None:
    result = run_action("rollout_plan", plan_args(fleet["state_dir"], **changes), fleet["task_vars"])
    assert result["failed"] and message in result["msg"], result["msg"]
    assert not os.path.exists(os.path.join(fleet["state_dir"], "runs"))


@pytest.mark.parametrize(("name", "one"), [
    ("node1", True), ("db-01.example.com", True), ("fe80::1", True), ("[fe80::1]:22", True), ("web[1]", True), ("10.0.0.1:2222", True),
    ("web,db", False), ("web:db", False), ("!node1", False), ("&node1", False), (" node1", False), ("node1 ", False),
])
def test_names_one_host_as_ansible_reads_play_hosts(name: str, one: bool) -> None:
    """The check agrees with what Ansible's split of a play's hosts list gives back (and its ordering of '!'/'&' patterns)."""
    assert names_one_host(name) is one
    assert (split_host_pattern([name]) == [name] and name[0] not in "!&") is one


def test_host_without_root_is_named(fleet: dict[str, t.Any], no_event_log: None) -> None:
    del fleet["task_vars"]["hostvars"]["node3"]["fleetpatch_host_root"]
    result = run_action("rollout_plan", plan_args(fleet["state_dir"]), fleet["task_vars"])
    assert result["failed"] and result["msg"] == "host 'node3': variable 'fleetpatch_host_root' is missing"


def test_edges_are_excluded_with_a_warning(fleet: dict[str, t.Any], no_event_log: None) -> None:
    fleet["task_vars"]["hostvars"]["node4"]["fleet_role"] = "edge"
    result = run_action("rollout_plan", plan_args(fleet["state_dir"], preview=True), fleet["task_vars"])
    assert "node4" not in result["host_order"]
    assert result["warnings"] == ["1 edge host(s) excluded from the rollout targets: node4"]


def test_unknown_option_is_an_argument_error(fleet: dict[str, t.Any]) -> None:
    with pytest.raises(AnsibleActionFail, match="lock_tll"):
        run_action("rollout_plan", plan_args(fleet["state_dir"], lock_tll=5), fleet["task_vars"])


def test_host_variables_read_as_hostvars_gives_them(tmp_path: t.Any) -> None:
    """rollout_plan reads a host's variables once (raw) and templates only what may be a template: the values are what
    Ansible's hostvars[host][name] gives, for templates from the inventory (trusted) and data set by a plugin (not)."""
    # pylint: disable=import-outside-toplevel
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.vars.hostvars import HostVars
    from ansible.vars.manager import VariableManager

    from conftest import make_action

    inventory_file = tmp_path / "hosts.yml"
    inventory_file.write_text(
        "all:\n"
        "  vars:\n"
        "    fleetpatch_host_root: \"/srv/{{ fleet_region }}/{{ inventory_hostname }}\"\n"
        "    fleetpatch_restart_command: [\"systemctl\", \"restart\", \"{{ inventory_hostname }}\"]\n"
        "  hosts:\n"
        "    web-1: {fleet_region: eu, fleet_tenant: acme, fleet_segment: web, fleet_environment: prod,\n"
        "            fleetpatch_health_url: \"http://{{ inventory_hostname }}:8080/h\"}\n"
        "    web-2: {fleet_region: us, fleet_tenant: acme, fleet_segment: web, fleet_environment: prod}\n"
        "    edge-1: {fleet_role: edge, fleet_region: eu}\n",
        encoding="utf-8",
    )
    loader = DataLoader()
    inventory = InventoryManager(loader=loader, sources=[str(inventory_file)])
    # data a plugin sets (not trusted as a template) stays as written, braces and all
    inventory._inventory.set_variable("web-2", "fleetpatch_health_url", "http://web-2:8080/h?q={{x}}")  # pylint: disable=protected-access
    hostvars = HostVars(inventory=inventory, variable_manager=VariableManager(loader=loader, inventory=inventory), loader=loader)
    action = make_action("rollout_plan", {})
    module = __import__(type(action).__module__, fromlist=["_HostVariables"])
    names = ("fleet_role", "fleet_region", "fleet_tenant", "fleet_segment", "fleet_environment", "fleetpatch_host_root",
             "fleetpatch_health_url", "fleetpatch_restart_command", "not_set")
    for host in ("web-1", "web-2", "edge-1", "unknown-host"):
        variables = module._HostVariables(hostvars, host, action._templar)  # pylint: disable=protected-access
        expected = {name: hostvars[host].get(name, "-") for name in names} if host in hostvars else dict.fromkeys(names, "-")
        assert {name: variables.get(name, "-") for name in names} == expected
    assert variables.get("fleet_role", "node") == "node"
    read = module._HostVariables(hostvars, "web-1", action._templar)  # pylint: disable=protected-access
    assert read.get("fleetpatch_host_root") == "/srv/eu/web-1" and read.get("fleetpatch_restart_command") == ["systemctl", "restart", "web-1"]
    plugin_set = module._HostVariables(hostvars, "web-2", action._templar)  # pylint: disable=protected-access
    assert plugin_set.get("fleetpatch_health_url") == "http://web-2:8080/h?q={{x}}"
    hosts, edges = action._collect_hosts(["web-1", "web-2", "edge-1"], {"hostvars": hostvars})  # pylint: disable=protected-access
    assert edges == ["edge-1"] and hosts["web-1"] == {"fleet_region": "eu", "fleet_tenant": "acme", "fleet_segment": "web", "fleet_environment": "prod"}


def test_template_vars_finds_every_host_variable_placeholder() -> None:
    module = __import__("ansible_collections.fleetpatch.rollout.plugins.action.rollout_plan", fromlist=["template_vars"])
    policy = {"checks": [{"name": "a", "address": "${var.fleet_address}", "steps": [{"url": "http://${ var.port }/${host}"}]}],
              "note": "$${var.literal} and ${run_id}", "broken": "${var.unterminated"}
    profiles = {"profiles": {"standard": {"checks": [{"headers": {"X": "${var.token_header}"}}]}}}
    assert module.template_vars(policy, profiles) == ["fleet_address", "port", "token_header"]


class CountingHostvars(dict):
    """A plain hostvars mapping that counts how often each host's variables are asked for (Ansible builds them anew each time)."""

    def __init__(self, data: dict[str, t.Any]) -> None:
        super().__init__(data)
        self.reads: dict[str, int] = {}

    def __getitem__(self, host: str) -> t.Any:
        self.reads[host] = self.reads.get(host, 0) + 1
        return super().__getitem__(host)


def test_checks_that_read_host_variables_cost_no_second_pass_over_the_hosts(fleet: dict[str, t.Any], no_event_log: None) -> None:
    """The plan renders every check's targets for every host from the variables it read for the plan itself."""
    counting = CountingHostvars(fleet["task_vars"]["hostvars"])
    for variables in counting.values():
        variables["fleet_address"] = "127.0.0.1"
    policy = dict(POLICY, checks=[{"name": "port", "kind": "tcp", "address": "${var.fleet_address}", "port": 9, "samples": 1, "timeout": 1}])
    result = run_action("rollout_plan", plan_args(fleet["state_dir"], preview=True, policy=policy), dict(fleet["task_vars"], hostvars=counting))
    assert not result.get("failed"), result.get("msg")
    assert counting.reads == dict.fromkeys(HOSTS, 1)


def test_a_check_variable_missing_on_a_host_is_still_named(fleet: dict[str, t.Any], no_event_log: None) -> None:
    policy = dict(POLICY, checks=[{"name": "port", "kind": "tcp", "address": "${var.fleet_address}", "port": 9, "samples": 1, "timeout": 1}])
    result = run_action("rollout_plan", plan_args(fleet["state_dir"], preview=True, policy=policy), fleet["task_vars"])
    assert result["failed"] and "fleet_address" in result["msg"], result["msg"]
