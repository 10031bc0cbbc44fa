# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: error_budget
short_description: Failures a rollout may absorb, from a count or a percent of the fleet
version_added: 1.0.0
author:
  - fleetpatch developers (@fleetpatch)
description:
  - Turns an error budget into the number of failed hosts a whole rollout may absorb.
  - A count is returned as is; a percent such as V(5%) is taken of the fleet size and rounded down, so V(5%) of
    19 hosts is V(0) and of 20 hosts is V(1).
  - The same function gives the C(error_budget.limit) of a plan compiled by
    M(fleetpatch.rollout.rollout_plan). With C(halt_when=exceeded) the rollout halts once the failures are
    more than the limit; with C(halt_when=reached) once they are equal to it. A run with no failures never halts.
options:
  _input:
    description: The budget, a count such as V(2) or a percent of the fleet such as V(5%) (between 0 and 100).
    type: raw
    required: true
  fleet_size:
    description: Number of hosts in the rollout.
    type: int
    required: true
seealso:
  - plugin: fleetpatch.rollout.plan_batches
    plugin_type: filter
"""

EXAMPLES = r"""
- name: Failures the rollout may absorb across all waves
  ansible.builtin.debug:
    msg: "{{ '5%' | fleetpatch.rollout.error_budget(groups['fleet_nodes'] | length) }}"
  # 40 nodes => 2

- name: A count stays a count
  ansible.builtin.assert:
    that:
      - 3 | fleetpatch.rollout.error_budget(100) == 3
"""

RETURN = r"""
_value:
  description: The number of failed hosts the whole rollout may absorb.
  type: int
"""

import typing as t

from ansible.errors import AnsibleFilterError

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._plan import PlanError, error_budget_limit


def error_budget(spec: t.Any, fleet_size: t.Any) -> int:
    try:
        return error_budget_limit(spec, fleet_size)
    except PlanError as exc:
        raise AnsibleFilterError(f"fleetpatch.rollout.error_budget: {exc}") from exc


class FilterModule:
    def filters(self) -> dict[str, t.Callable[..., t.Any]]:
        return {"error_budget": error_budget}
