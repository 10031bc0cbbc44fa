# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: plan_batches
short_description: Batch sizes of a compiled rollout plan, for a play's C(serial)
version_added: 1.0.0
author:
  - fleetpatch developers (@fleetpatch)
description:
  - Returns the size of every batch of a plan compiled by M(fleetpatch.rollout.rollout_plan), in plan order.
  - Give the result to a play's C(serial) keyword over the plan's hosts, added in the plan's C(host_order), so that
    every Ansible batch is exactly one plan batch (canary first, then each wave split by its budgets).
options:
  _input:
    description:
      - The plan, as returned by M(fleetpatch.rollout.rollout_plan) or read back from C(runs/<run_id>/plan.json).
    type: dict
    required: true
seealso:
  - plugin: fleetpatch.rollout.error_budget
    plugin_type: filter
"""

EXAMPLES = r"""
# rollout: the registered result of fleetpatch.rollout.rollout_plan on localhost.
# A later play can use the batch sizes as its serial:
#   serial: "{{ hostvars['localhost']['rollout']['plan'] | fleetpatch.rollout.plan_batches }}"
- name: Keep the batch sizes of the compiled plan
  ansible.builtin.set_fact:
    rollout_serial: "{{ rollout.plan | fleetpatch.rollout.plan_batches }}"

- name: Show the batch sizes of a saved plan
  ansible.builtin.debug:
    msg: "{{ lookup('ansible.builtin.file', plan_path) | from_json | fleetpatch.rollout.plan_batches }}"
  vars:
    plan_path: "{{ fleetpatch_state_dir }}/runs/{{ run_id }}/plan.json"
  # => [1, 4, 4, 3]
"""

RETURN = r"""
_value:
  description: Number of hosts in each batch, in plan order (the canary batch first).
  type: list
  elements: int
"""

import typing as t

from ansible.errors import AnsibleFilterError

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._plan import PlanError, serial_batches


def plan_batches(plan: t.Any) -> list[int]:
    try:
        return serial_batches(plan)
    except PlanError as exc:
        raise AnsibleFilterError(f"fleetpatch.rollout.plan_batches: {exc}") from exc


class FilterModule:
    def filters(self) -> dict[str, t.Callable[..., t.Any]]:
        return {"plan_batches": plan_batches}
