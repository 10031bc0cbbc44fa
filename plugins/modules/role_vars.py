#!/usr/bin/python
# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: role_vars
short_description: Convert a role entry point's boolean and number variables strictly (survey-proof variables)
version_added: 1.0.0
description:
  - Runs once on the controller at the start of a role entry point of this collection. Reads every variable the entry point
    declares as V(bool), V(int) or V(float) in the role's C(meta/argument_specs.yml) (and the percentages, such as
    C(prestage_fail_below), which also take V(25%)), converts it strictly and returns the converted values, which the role's
    tasks read instead of the raw variables.
  - AWX surveys send every answer as a string and extra variables cannot be overridden by any task, so C(rollout_preview=false)
    from a survey would otherwise be the truthy string V(false). A boolean takes V(true), V(false), V(yes), V(no), V(on), V(off),
    V(1) or V(0) (any case); a number takes its digits. Anything else fails the task naming the variable, before any host is
    touched.
  - This is an action plugin; it runs on the controller only.
author: fleetpatch developers (@fleetpatch)
extends_documentation_fragment:
  - fleetpatch.rollout._attributes
attributes:
  check_mode:
    support: full
    details: Reads only.
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  role:
    description: The role of this collection whose variables are converted.
    type: str
    required: true
    choices: [prestage, reconcile, rollout]
  entry_point:
    description:
      - The entry points of the role's argument specs whose options are converted.
      - A play that runs before the entry point that reads a variable names that entry point too, so that a bad value
        stops the first play (pre-staging checks the report's C(prestage_fail_below) before any host is staged).
    type: list
    elements: str
    default: [main]
"""

EXAMPLES = r"""
- name: Convert the rollout variables an AWX survey may have sent as strings
  fleetpatch.rollout.role_vars:
    role: rollout
    entry_point: plan
  register: __rollout_vars

- name: Preview only
  ansible.builtin.debug:
    msg: preview
  when: __rollout_vars.rollout_preview
"""

RETURN = r"""
_variable_:
  description: One key per boolean, integer, float or percentage variable of the entry point, with its converted value.
  returned: success
  type: raw
  sample: {"rollout_preview": false, "rollout_lock_ttl": 1800}
"""
