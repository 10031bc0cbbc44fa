# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for fleetpatch.rollout.role_vars: a role entry point's boolean and number variables, converted. Controller only."""

from __future__ import annotations

import os
import typing as t

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._action import ControllerAction
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._survey import SurveyValueError, normalise_role_vars, typed_options
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._yaml import YamlError, load_file

ROLES = ("prestage", "reconcile", "rollout")
# plugins/action/ -> the collection root, whose roles/ hold the argument specs (the same layout once installed)
COLLECTION_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def entry_point_options(role: str, entry_point: str) -> dict[str, t.Any]:
    """The options of one entry point of one of the collection's roles, from its meta/argument_specs.yml."""
    path = os.path.join(COLLECTION_ROOT, "roles", role, "meta", "argument_specs.yml")
    specs = load_file(path, what="argument specs")
    try:
        return dict(specs["argument_specs"][entry_point].get("options") or {})
    except (KeyError, TypeError, AttributeError):
        raise SurveyValueError(f"role {role} has no entry point {entry_point}") from None


class ActionModule(ControllerAction):
    argument_spec = {
        "role": {"type": "str", "required": True, "choices": list(ROLES)},
        "entry_point": {"type": "list", "elements": "str", "default": ["main"]},
    }
    errors = (SurveyValueError, YamlError)
    error_prefix = "fleetpatch.rollout.role_vars: "

    def _act(self, args: dict[str, t.Any], task_vars: dict[str, t.Any]) -> dict[str, t.Any]:
        options: dict[str, t.Any] = {}
        for entry_point in args["entry_point"]:
            options.update(entry_point_options(args["role"], entry_point))
        values = {name: self._templar.template(task_vars[name]) for name in typed_options(options) if name in task_vars}
        return {"changed": False, **normalise_role_vars(options, values)}
