"""AWX configuration as code (awx/): every object validates against the argument spec of the awx.awx module that
creates it (the spec is taken from the module itself, as the installed collection builds it), awx/configure.yml hands
every key of every object to its module, and each template's playbook, survey and variables agree with the roles'
argument specs (types, choices, defaults that the roles' strict conversion takes)."""

from __future__ import annotations

import importlib
import os
import re
import typing as t

import pytest
import yaml
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.fleetpatch.rollout.plugins.action.role_vars import entry_point_options
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._survey import SurveyValueError, convert_value, typed_options

pytestmark = pytest.mark.integration

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AWX_DIR = os.path.join(REPO_ROOT, "awx")
# object list (a variable of awx/config/*.yml) -> the awx.awx module that creates each object
MODULES = {
    "fleetpatch_awx_credential_types": "credential_type",
    "fleetpatch_awx_execution_environments": "execution_environment",
    "fleetpatch_awx_projects": "project",
    "fleetpatch_awx_job_templates": "job_template",
    "fleetpatch_awx_workflow_job_templates": "workflow_job_template",
    "fleetpatch_awx_workflow_nodes": "workflow_job_template_node",
    "fleetpatch_awx_schedules": "schedule",
}
# playbook -> the roles whose argument specs declare its variables
PLAYBOOK_ROLES = {"playbooks/rollout.yml": ["rollout"], "playbooks/prestage.yml": ["prestage"],
                  "playbooks/reconcile.yml": ["reconcile"], "awx/playbooks/rollback.yml": ["rollout"]}
# settings of the whole collection, not of one role
COLLECTION_VARS = {"fleetpatch_state_backend"}
SURVEY_TYPES = {"bool": {"multiplechoice"}, "int": {"integer"}, "float": {"float", "integer"}, "percent": {"text", "integer", "float"},
                "str": {"text", "textarea", "multiplechoice", "password"}, "raw": {"text", "textarea"}, "list": {"multiselect"}}


class _Loader(yaml.SafeLoader):
    """YAML as Ansible reads it, with !unsafe kept as the literal text AWX receives."""


_Loader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))


def _load(path: str) -> t.Any:
    with open(path, encoding="utf-8") as handle:
        return yaml.load(handle, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def _play_vars() -> dict[str, t.Any]:
    play_vars = dict(_load(os.path.join(AWX_DIR, "configure.yml"))[0]["vars"])
    play_vars.update(fleetpatch_awx_scm_url="https://git.example/fleetpatch.git", fleetpatch_awx_ee_image="registry.example/fleetpatch-ee:1.0.0")
    return play_vars


def _render(value: t.Any, play_vars: dict[str, t.Any]) -> t.Any:
    """The play's "{{ name }}" references replaced by their values (what awx/configure.yml hands to the modules)."""
    if isinstance(value, dict):
        return {key: _render(item, play_vars) for key, item in value.items()}
    if isinstance(value, list):
        return [_render(item, play_vars) for item in value]
    match = re.fullmatch(r"\{\{ (\w+) \}\}", value) if isinstance(value, str) else None
    return play_vars[match.group(1)] if match and match.group(1) in play_vars else value


@pytest.fixture(scope="module")
def objects() -> dict[str, list[dict[str, t.Any]]]:
    play_vars = _play_vars()
    found: dict[str, list[dict[str, t.Any]]] = {}
    for name in sorted(os.listdir(os.path.join(AWX_DIR, "config"))):
        for key, value in _load(os.path.join(AWX_DIR, "config", name)).items():
            assert key not in found, f"{key} defined twice"
            found[key] = _render(value, play_vars)
    assert set(found) == set(MODULES)
    return found


class _Captured(Exception):
    pass


def module_spec(name: str) -> tuple[dict[str, t.Any], dict[str, t.Any]]:
    """(argument_spec, constraints) exactly as the awx.awx module builds them in its main()."""
    from ansible_collections.awx.awx.plugins.module_utils import controller_api  # noqa: PLC0415 - from the installed ansible package

    def capture(self: t.Any, argument_spec: dict[str, t.Any] | None = None, **constraints: t.Any) -> None:
        raise _Captured(argument_spec, constraints)

    module = importlib.import_module(f"ansible_collections.awx.awx.plugins.modules.{name}")
    original = controller_api.ControllerAPIModule.__init__
    controller_api.ControllerAPIModule.__init__ = capture  # type: ignore[method-assign]
    try:
        module.main()
    except _Captured as captured:
        return captured.args[0], captured.args[1]
    finally:
        controller_api.ControllerAPIModule.__init__ = original  # type: ignore[method-assign]
    raise AssertionError(f"awx.awx.{name} built no ControllerAPIModule")


def role_options(playbook: str) -> dict[str, dict[str, t.Any]]:
    """Every variable the playbook's roles declare (all entry points), or the registry playbook's own variables."""
    if playbook == "playbooks/registry.yml":
        with open(os.path.join(REPO_ROOT, playbook), encoding="utf-8") as handle:
            return {name: {"type": "raw"} for name in re.findall(r"\b(registry_\w+)\b", handle.read())}
    options: dict[str, dict[str, t.Any]] = {}
    for role in PLAYBOOK_ROLES[playbook]:
        for entry_point in _load(os.path.join(REPO_ROOT, "roles", role, "meta", "argument_specs.yml"))["argument_specs"]:
            options.update(entry_point_options(role, entry_point))
    return options


def test_every_object_validates_against_its_awx_module_argument_spec(objects) -> None:
    for key, module in MODULES.items():
        spec, constraints = module_spec(module)
        validator = ArgumentSpecValidator(spec, **constraints)
        for obj in objects[key]:
            result = validator.validate(obj)
            assert not result.error_messages, (module, obj.get("name") or obj.get("identifier"), result.error_messages)
            assert not result._unsupported_parameters, (module, result._unsupported_parameters)


def test_configure_playbook_hands_every_key_of_every_object_to_its_module(objects) -> None:
    play = _load(os.path.join(AWX_DIR, "configure.yml"))[0]
    passed: dict[str, set[str]] = {}
    for task in play["tasks"]:
        for action, args in task.items():
            if action.startswith("awx.awx."):
                module = action.removeprefix("awx.awx.")
                passed[module] = set(args)
                # each task loops over the object list of its own module
                assert MODULES[re.match(r"\{\{ (\w+)", task["loop"]).group(1)] == module, task["name"]
    assert set(passed) == set(MODULES.values())
    for key, module in MODULES.items():
        spec, _constraints = module_spec(module)
        assert passed[module] <= set(spec), (module, passed[module] - set(spec))
        for obj in objects[key]:
            assert set(obj) <= passed[module], (module, set(obj) - passed[module])


def _check_survey(template: dict[str, t.Any], options: dict[str, dict[str, t.Any]]) -> None:
    kinds = typed_options(options)
    for question in template["survey_spec"]["spec"]:
        variable = question["variable"]
        assert variable in options, (template["name"], variable)
        kind = kinds.get(variable, options[variable].get("type", "str"))
        assert question["type"] in SURVEY_TYPES[kind], (template["name"], variable, question["type"], kind)
        answers = list(question.get("choices", [])) + ([question["default"]] if "default" in question else [])
        for answer in answers:
            if kind in ("bool", "int", "float", "percent"):
                convert_value(variable, kind, answer)  # what the role's strict conversion takes
            elif options[variable].get("choices"):
                assert answer in options[variable]["choices"], (template["name"], variable, answer)
        if kind == "bool":
            assert {str(choice).lower() for choice in question["choices"]} == {"true", "false"}, (template["name"], variable)


def test_templates_run_existing_playbooks_with_role_variables_and_typed_surveys(objects) -> None:
    assert {template["name"] for template in objects["fleetpatch_awx_job_templates"]} >= {
        "fleetpatch preview", "fleetpatch rollout", "fleetpatch prestage", "fleetpatch reconcile", "fleetpatch registry verify"}
    for template in objects["fleetpatch_awx_job_templates"]:
        assert os.path.isfile(os.path.join(REPO_ROOT, template["playbook"])), template["playbook"]
        options = role_options(template["playbook"])
        for variable in template.get("extra_vars", {}):
            assert variable in options or variable in COLLECTION_VARS, (template["name"], variable)
        if template.get("survey_enabled"):
            _check_survey(template, options)


def test_a_bad_survey_default_would_be_caught() -> None:
    options = entry_point_options("rollout", "plan")
    bad = {"name": "t", "survey_spec": {"spec": [{"variable": "rollout_lock_ttl", "type": "integer", "default": "25x"}]}}
    with pytest.raises(SurveyValueError):
        _check_survey(bad, options)
    wrong_type = {"name": "t", "survey_spec": {"spec": [{"variable": "rollout_preview", "type": "text", "default": "false"}]}}
    with pytest.raises(AssertionError):
        _check_survey(wrong_type, options)


def _survey_variables(template: dict[str, t.Any]) -> set[str]:
    return {question["variable"] for question in template.get("survey_spec", {}).get("spec", [])} if template.get("survey_enabled") else set()


def test_workflow_preview_approval_canary_approval_waves_and_rollback_on_failure(objects) -> None:
    templates = {template["name"]: template for template in objects["fleetpatch_awx_job_templates"]}
    (workflow,) = objects["fleetpatch_awx_workflow_job_templates"]
    nodes = {node["identifier"]: node for node in objects["fleetpatch_awx_workflow_nodes"]}
    for node in nodes.values():
        assert node["workflow_job_template"] == workflow["name"]
        for link in node.get("success_nodes", []) + node.get("failure_nodes", []) + node.get("always_nodes", []):
            assert link in nodes, (node["identifier"], link)
        if "unified_job_template" in node:
            template = templates[node["unified_job_template"]]
            # a node's extra_data reaches the job only through the template's survey; the workflow's survey answers too
            assert set(node.get("extra_data", {})) <= _survey_variables(template), node["identifier"]
            options = role_options(template["playbook"])
            assert _survey_variables(workflow) <= set(options), node["identifier"]
            assert not set(node.get("extra_data", {})) & _survey_variables(workflow), "workflow answers would override the node"

    def path(start: str) -> list[str]:
        order = [start]
        while nodes[order[-1]].get("success_nodes"):
            (following,) = nodes[order[-1]]["success_nodes"]
            order.append(following)
        return order

    roots = set(nodes) - {link for node in nodes.values() for link in node.get("success_nodes", []) + node.get("failure_nodes", [])}
    assert roots == {"preview"}
    assert path("preview") == ["preview", "approve-canary", "canary", "approve-waves", "waves"]
    assert templates[nodes["preview"]["unified_job_template"]]["extra_vars"]["rollout_preview"] is True
    assert "approval_node" in nodes["approve-canary"] and "approval_node" in nodes["approve-waves"]
    assert nodes["canary"]["extra_data"]["rollout_targets"] != nodes["waves"]["extra_data"]["rollout_targets"]
    assert nodes["waves"]["extra_data"]["rollout_replan"] is True
    assert nodes["canary"]["failure_nodes"] == nodes["waves"]["failure_nodes"] == ["rollback"]
    assert templates[nodes["rollback"]["unified_job_template"]]["playbook"] == "awx/playbooks/rollback.yml"


def test_schedules_reconcile_nightly_and_prestage_ahead_of_the_window(objects) -> None:
    templates = {template["name"]: template for template in objects["fleetpatch_awx_job_templates"]}
    by_template = {schedule["unified_job_template"]: schedule for schedule in objects["fleetpatch_awx_schedules"]}
    assert set(by_template) == {"fleetpatch reconcile", "fleetpatch prestage"}
    for name, schedule in by_template.items():
        assert re.fullmatch(r"DTSTART:\d{8}T\d{6}Z RRULE:FREQ=(DAILY|WEEKLY)(;INTERVAL=\d+)?(;BYDAY=(MO|TU|WE|TH|FR|SA|SU)(,(MO|TU|WE|TH|FR|SA|SU))*)?",
                            schedule["rrule"]), schedule["rrule"]
        assert set(schedule.get("extra_data", {})) <= _survey_variables(templates[name]), name
        options = role_options(templates[name]["playbook"])
        kinds = typed_options(options)
        for variable, answer in schedule.get("extra_data", {}).items():
            if variable in kinds:
                convert_value(variable, kinds[variable], answer)
    assert "FREQ=DAILY" in by_template["fleetpatch reconcile"]["rrule"]
    assert "FREQ=WEEKLY" in by_template["fleetpatch prestage"]["rrule"]


def test_credential_type_injects_secrets_as_environment_only(objects) -> None:
    (credential_type,) = objects["fleetpatch_awx_credential_types"]
    fields = {field["id"]: field for field in credential_type["inputs"]["fields"]}
    injectors = credential_type["injectors"]
    assert set(injectors) <= {"env", "file"}, "never extra_vars"
    assert all(field["secret"] for field in fields.values())
    referenced = set()
    for value in list(injectors["env"].values()) + list(injectors.get("file", {}).values()):
        referenced |= set(re.findall(r"\{\{ (?:tower\.filename\.)?(\w+) \}\}", value))
    assert referenced <= set(fields) and set(fields) <= referenced
    # the collection reads the DSN itself; the job templates read the other two by lookup at run time
    assert "FLEETPATCH_STATE_DSN" in injectors["env"]
    sources = []
    for directory, _dirs, files in os.walk(os.path.join(REPO_ROOT, "plugins")):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(directory, name), encoding="utf-8") as handle:
                    sources.append(handle.read())
    assert any('"FLEETPATCH_STATE_DSN"' in source for source in sources)
    looked_up = set()
    for template in objects["fleetpatch_awx_job_templates"]:
        looked_up |= set(re.findall(r"lookup\('ansible\.builtin\.env', '(\w+)'\)", str(template.get("extra_vars", {}))))
    assert set(injectors["env"]) - {"FLEETPATCH_STATE_DSN", "FLEETPATCH_SECRET_VARS"} == looked_up
