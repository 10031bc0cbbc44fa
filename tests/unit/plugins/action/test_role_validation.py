"""Role argument validation of playbooks/rollout.yml runs once per run: the batch, rollback and finish plays import
their entry points without validation, which is sound only because the plan play validates every one of their options
with the same spec (so a bad value still fails on localhost before any host is touched)."""

from __future__ import annotations

import os
import typing as t

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
SPECS = os.path.join(REPO, "roles", "rollout", "meta", "argument_specs.yml")
PLAYBOOK = os.path.join(REPO, "playbooks", "rollout.yml")
UNVALIDATED = ("apply", "rollback", "finish")


def load(path: str) -> t.Any:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def checked(spec: t.Any) -> t.Any:
    """What validation reads of an option's spec (its description is documentation only)."""
    return {key: value for key, value in spec.items() if key != "description"} if isinstance(spec, dict) else spec


def role_imports() -> dict[str, dict[str, t.Any]]:
    """tasks_from -> the import_role arguments of the rollout role in playbooks/rollout.yml."""
    found = {}
    for play in load(PLAYBOOK):
        for task in play.get("tasks") or []:
            imported = task.get("ansible.builtin.import_role")
            if imported and imported["name"] == "fleetpatch.rollout.rollout":
                found[imported.get("tasks_from", "main")] = imported
    return found


@pytest.mark.parametrize("entry_point", UNVALIDATED)
def test_the_plan_entry_point_validates_every_option_of(entry_point: str) -> None:
    specs = load(SPECS)["argument_specs"]
    plan = specs["plan"]["options"]
    options = specs[entry_point].get("options") or {}
    assert {name: checked(plan.get(name)) for name in options} == {name: checked(spec) for name, spec in options.items()}


def test_only_the_plan_play_validates_the_rollout_role() -> None:
    imports = role_imports()
    assert imports["plan"].get("rolespec_validate", True) is True
    assert {name: imports[name].get("rolespec_validate", True) for name in UNVALIDATED} == dict.fromkeys(UNVALIDATED, False)
