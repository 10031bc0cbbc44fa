"""fleetpatch.rollout.patch_apply's action plugin with plan_var: the module arguments it builds in Python from the plan's
registered result, the no_log URL hand-over and the host's variables are exactly the ones the role's tasks produced in
Jinja before (the expressions below are those tasks' arguments, kept as the reference), for every stage, a delta, signed
and unsigned environments, command checks and the rollback."""

from __future__ import annotations

import copy
import typing as t

import pytest
import yaml
from ansible._internal._datatag._tags import TrustedAsTemplate
from ansible.errors import AnsibleActionFail
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar

from conftest import make_action

# The apply task of roles/rollout/tasks/apply.yml and the rollback task of rollback.yml before the plugin built the
# arguments (the block's vars first, then the task's arguments), and the command_checks task's one argument.
REFERENCE_VARS = yaml.safe_load(r"""
__rollout_patch: "{{ hostvars['localhost']['__rollout_plan']['patch'] }}"
__rollout_artifacts: "{{ hostvars['localhost']['__rollout_plan']['artifacts'] }}"
__rollout_urls: >-
  {{ hostvars['localhost']['__rollout_artifact_urls'] | default({'url': __rollout_patch.artifact.url | default(none),
     'delta_url': __rollout_patch.artifact.delta.url | default(none) if __rollout_patch.artifact.delta is defined else none}) }}
""")
REFERENCE_APPLY = yaml.safe_load(r"""
root: "{{ fleetpatch_host_root }}"
service: "{{ __rollout_patch.service }}"
version: "{{ __rollout_patch.target_version }}"
sha256: "{{ __rollout_patch.artifact.sha256 }}"
src: "{{ __rollout_patch.artifact.path if rollout_stage == 'copy' else omit }}"
artifact_url: "{{ __rollout_urls.url if rollout_stage == 'url' and __rollout_urls.url else omit }}"
artifact_size: "{{ __rollout_patch.artifact.size | default(omit) }}"
signature: "{{ __rollout_patch.artifact.signature | default(omit, true) }}"
allowed_signers: "{{ __rollout_artifacts.allowed_signers | default(omit, true) }}"
signer_identity: "{{ __rollout_artifacts.signer_identity | default(omit, true) }}"
require_signature: >-
  {{ __rollout_artifacts.require_signature is sameas true or (__rollout_artifacts.require_signature == 'auto'
     and fleet_environment | default('') in __rollout_artifacts.production_environments) }}
affected_versions: "{{ __rollout_patch.affected_versions | default([]) }}"
allow_downgrade: "{{ __rollout_patch.allow_downgrade | default(false) }}"
max_artifact_bytes: "{{ __rollout_artifacts.max_artifact_bytes }}"
max_time: "{{ __rollout_artifacts.max_time }}"
min_throughput: "{{ __rollout_artifacts.min_throughput }}"
throughput_window: "{{ __rollout_artifacts.throughput_window }}"
patch_id: "{{ __rollout_patch.patch_id }}"
restart_command: "{{ fleetpatch_restart_command | default(omit) }}"
health_url: "{{ fleetpatch_health_url | default(omit) }}"
delta: >-
  {{ {'sha256': __rollout_patch.artifact.delta.sha256, 'base_version': __rollout_patch.artifact.delta.base_version,
      'size': __rollout_patch.artifact.delta.size | default(none),
      'url': __rollout_urls.delta_url | default(none) if rollout_stage == 'url' else none,
      'signature': __rollout_patch.artifact.delta.signature | default(none)}
     if __rollout_patch.artifact.delta is defined else omit }}
""")
REFERENCE_COMMAND_CHECKS = "{{ hostvars['localhost']['__rollout_plan']['checks']['command'] }}"
REFERENCE_ROLLBACK = yaml.safe_load(r"""
root: "{{ fleetpatch_host_root }}"
service: "{{ __rollout_patch.service }}"
version: "{{ __rollout_patch.target_version }}"
sha256: "{{ __rollout_patch.artifact.sha256 }}"
state: rollback
patch_id: "{{ __rollout_patch.patch_id }}"
restart_command: "{{ fleetpatch_restart_command | default(omit) }}"
health_url: "{{ fleetpatch_health_url | default(omit) }}"
""")

RAW_URLS = {"url": "http://deploy:hunter22@artifacts.invalid/myapp-1.0.1.tar.gz", "delta_url": None}
DELTA = {"sha256": "b" * 64, "base_version": "1.0.0", "size": 2048, "url": "http://********@artifacts.invalid/myapp-1.0.1.delta",
         "signature": "-----BEGIN SSH SIGNATURE-----\nZGVsdGE=\n-----END SSH SIGNATURE-----"}
SIGNERS = "release@fleetpatch ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB1ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ"
COMMAND_CHECKS = [{"name": "queue-drained", "kind": "command", "command": ["/bin/true"], "samples": 1}]


def trusted(value: t.Any) -> t.Any:
    """Templates as a role's YAML holds them (trusted), nested values included."""
    if isinstance(value, str):
        return TrustedAsTemplate().tag(value)
    if isinstance(value, dict):
        return {key: trusted(item) for key, item in value.items()}
    return value


def host_vars(*, environment: str = "staging", **extra: t.Any) -> dict[str, t.Any]:
    """One host's variables; its root is a template over another variable, as inventories write them."""
    return {"fleet_environment": environment, "fleetpatch_base": "/srv/nodes", "fleetpatch_host_root": trusted("{{ fleetpatch_base }}/node1"),
            "fleetpatch_restart_command": ["/usr/bin/systemctl", "restart", "myapp"], "fleetpatch_health_url": "http://127.0.0.1:8081/health",
            **extra}


def play_vars(planned: dict[str, t.Any], urls: dict[str, t.Any] | None, stage: str, host: dict[str, t.Any]) -> dict[str, t.Any]:
    """task_vars of one host of the batch play: its own variables, rollout_stage, and localhost's plan and URLs."""
    localhost = {"__rollout_plan": planned, **({"__rollout_artifact_urls": urls} if urls is not None else {})}
    return {**host, "rollout_stage": stage, "hostvars": {"localhost": localhost, "node1": host}}


def jinja_args(reference: dict[str, t.Any], task_vars: dict[str, t.Any]) -> dict[str, t.Any]:
    """What the role's Jinja produced for these variables (omitted arguments left out)."""
    templar = Templar(loader=DataLoader(), variables={**task_vars, **trusted(REFERENCE_VARS)})
    args = templar.template(trusted(reference))
    commands = templar.template(trusted(REFERENCE_COMMAND_CHECKS))
    if reference is REFERENCE_APPLY and commands:
        # the command_checks task's samples now come from the same execution
        args["command_checks"] = commands
    return args


def action_for(task_args: dict[str, t.Any], task_vars: dict[str, t.Any], *, check_mode: bool = False) -> t.Any:
    """The plugin for one host's task; its templar knows the host's variables, as a task executor's does."""
    action = make_action("patch_apply", task_args, check_mode=check_mode)
    action._templar = Templar(loader=DataLoader(), variables=task_vars)  # pylint: disable=protected-access
    return action


def plugin_args(task_args: dict[str, t.Any], task_vars: dict[str, t.Any], *, check_mode: bool = False) -> dict[str, t.Any]:
    """The module arguments the action plugin hands to its module execution (captured instead of running it)."""
    action = action_for(task_args, task_vars, check_mode=check_mode)
    calls: list[dict[str, t.Any]] = []

    def execute_module(*, module_name: str, module_args: dict[str, t.Any], task_vars: dict[str, t.Any]) -> dict[str, t.Any]:
        assert module_name == "fleetpatch.rollout.patch_apply"
        calls.append(module_args)
        return {"changed": False}

    action._execute_module = execute_module  # pylint: disable=protected-access
    assert action.run(task_vars=task_vars) == {"changed": False}
    assert len(calls) == 1
    return calls[0]


def variant(planned: dict[str, t.Any], case: str) -> tuple[dict[str, t.Any], dict[str, t.Any] | None, dict[str, t.Any]]:
    """A plan result, its URL hand-over and a host's variables for one case."""
    planned = copy.deepcopy(planned)
    urls: dict[str, t.Any] | None = dict(RAW_URLS)
    host = host_vars()
    artifact = planned["patch"]["artifact"]
    if case == "delta":
        artifact.update(size=4096, delta=dict(DELTA))
        urls = dict(RAW_URLS, delta_url="http://deploy:hunter22@artifacts.invalid/myapp-1.0.1.delta")
    elif case == "signed-prod":
        artifact["signature"] = DELTA["signature"]
        planned["artifacts"].update(allowed_signers=SIGNERS, signer_identity="release@fleetpatch")
        host = host_vars(environment="prod")
    elif case == "unsigned-required":
        planned["artifacts"]["require_signature"] = True
    elif case == "signature-off-in-prod":
        planned["artifacts"]["require_signature"] = False
        host = host_vars(environment="prod")
    elif case == "no-handover":
        # nothing set the URLs (the plan's masked ones are the fallback), no environment, no restart command or health URL
        urls = None
        host = {key: value for key, value in host_vars().items() if key in ("fleetpatch_base", "fleetpatch_host_root")}
    elif case == "command-checks":
        planned["checks"]["command"] = copy.deepcopy(COMMAND_CHECKS)
    elif case == "downgrade":
        planned["patch"].update(allow_downgrade=True, affected_versions=["1.0.2", "1.0.3"])
    return planned, urls, host


CASES = ["plain", "delta", "signed-prod", "unsigned-required", "signature-off-in-prod", "no-handover", "command-checks", "downgrade"]


@pytest.mark.parametrize("stage", ["url", "copy", "prestaged"])
@pytest.mark.parametrize("case", CASES)
def test_arguments_from_the_plan_are_the_jinja_ones(planned: dict[str, t.Any], tmp_path: t.Any, stage: str, case: str) -> None:
    plan, urls, host = variant(planned, case)
    if stage == "copy":
        artifact = tmp_path / "myapp-1.0.1.tar.gz"
        artifact.write_bytes(b"artifact")
        plan["patch"]["artifact"]["path"] = str(artifact)
    task_vars = play_vars(plan, urls, stage, host)
    expected = jinja_args(REFERENCE_APPLY, task_vars)
    # check mode: the copy stage transfers nothing, so every stage reaches the module execution here
    built = plugin_args({"plan_var": "__rollout_plan", "urls_var": "__rollout_artifact_urls", "stage": stage}, task_vars, check_mode=True)
    # src is the plugin's own (the transfer), never a module argument
    assert built == {key: value for key, value in expected.items() if key != "src"}
    assert ("src" in expected) is (stage == "copy")
    assert built["root"] == "/srv/nodes/node1"
    if stage == "url" and urls:
        assert built["artifact_url"] == RAW_URLS["url"]


def test_rollback_arguments_are_the_jinja_ones(planned: dict[str, t.Any]) -> None:
    for case in ("plain", "no-handover"):
        plan, urls, host = variant(planned, case)
        task_vars = play_vars(plan, urls, "url", host)
        assert plugin_args({"plan_var": "__rollout_plan", "state": "rollback"}, task_vars) == jinja_args(REFERENCE_ROLLBACK, task_vars)


def test_explicit_arguments_win_and_the_explicit_form_is_unchanged(planned: dict[str, t.Any]) -> None:
    task_vars = play_vars(planned, dict(RAW_URLS), "url", host_vars())
    built = plugin_args({"plan_var": "__rollout_plan", "urls_var": "__rollout_artifact_urls", "health_retries": 9, "max_time": 60}, task_vars)
    assert (built["health_retries"], built["max_time"], built["artifact_url"]) == (9, 60, RAW_URLS["url"])
    explicit = {"root": "/srv/x", "service": "myapp", "version": "1.0.1", "sha256": "a" * 64, "artifact_url": "https://a.invalid/x.tgz"}
    assert plugin_args(explicit, task_vars) == explicit


@pytest.mark.parametrize(
    ("task_args", "localhost", "message"),
    [
        ({"plan_var": "__rollout_plan", "stage": "scp"}, None, "stage must be one of url, copy, prestaged, got 'scp'"),
        ({"plan_var": ""}, None, "plan_var must be the name of a variable of localhost"),
        ({"plan_var": "__rollout_plan", "urls_var": 3}, None, "urls_var must be the name of a variable of localhost"),
        ({"plan_var": "__missing"}, None, "__missing on localhost is not the registered result of fleetpatch.rollout.rollout_plan"),
        ({"plan_var": "__rollout_plan"}, {"__rollout_plan": {"patch": {"service": "myapp"}}},
         "__rollout_plan on localhost is not the registered result of fleetpatch.rollout.rollout_plan"),
        ({"plan_var": "__rollout_plan", "stage": "copy"}, "plan", "rollout_stage=copy needs artifact.path in the patch manifest (the file on the controller)"),
    ],
)
def test_refused_before_the_host_is_touched(planned: dict[str, t.Any], task_args: dict[str, t.Any], localhost: t.Any, message: str) -> None:
    task_vars = play_vars(planned, dict(RAW_URLS), "url", host_vars())
    if isinstance(localhost, dict):
        task_vars["hostvars"]["localhost"] = localhost
    action = action_for(task_args, task_vars)
    # the fake connection has no exec_command: reaching the host would raise something else
    with pytest.raises(AnsibleActionFail) as raised:
        action.run(task_vars=task_vars)
    assert str(raised.value.message) == message


@pytest.mark.parametrize("stage", ["url", "prestaged"])
def test_no_remote_tmp_dir_unless_a_file_is_staged(planned: dict[str, t.Any], stage: str) -> None:
    # a pipelining connection (ssh) runs the module with no remote tmp dir: the plugin must not ask for one
    action = action_for({"plan_var": "__rollout_plan", "urls_var": "__rollout_artifact_urls", "stage": stage},
                        play_vars(planned, dict(RAW_URLS), stage, host_vars()))
    action._connection._shell.tmpdir = None  # pylint: disable=protected-access
    made: list[bool] = []
    action._make_tmp_path = lambda *args, **kwargs: made.append(True)  # pylint: disable=protected-access
    action._execute_module = lambda **kwargs: {"changed": False}  # pylint: disable=protected-access
    assert action.run(task_vars=play_vars(planned, dict(RAW_URLS), stage, host_vars())) == {"changed": False}
    assert made == []
