#!/usr/bin/python
# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: rollout_finish
short_description: Record rollbacks, write the run summary and release the rollout lock
version_added: 1.0.0
description:
  - Runs once on the controller at the end of C(playbooks/rollout.yml). Records the outcome of every rollback, writes
    C(runs/<run_id>/summary.json) atomically, returns the C(rollback.host), C(rollback.finished) and C(run.finished) events
    for the event callback (C(fleetpatch_events)) and releases the lock.
  - This is an action plugin; it runs on the controller only.
author: fleetpatch developers (@fleetpatch)
extends_documentation_fragment:
  - fleetpatch.rollout._attributes
  - fleetpatch.rollout._run
attributes:
  check_mode:
    support: full
    details: In check mode nothing is written.
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  rollback_hosts:
    description: Hosts that the rollback play handled.
    type: list
    elements: str
    default: []
  rollback_result_var:
    description: Host variable that holds each host's rollback result.
    type: str
    default: __rollout_rollback
"""

EXAMPLES = r"""
- name: Finish the run
  fleetpatch.rollout.rollout_finish:
    run_id: "{{ __rollout_plan.run_id }}"
    plan: "{{ __rollout_plan }}"
    rollback_hosts: "{{ groups['fleetpatch_rollback_hosts'] | default([]) }}"
"""

RETURN = r"""
status:
  description: V(rolled_out), V(halted), V(held), V(rolled_back), V(rollback_failed), V(interrupted) or V(preview).
  returned: always
  type: str
summary:
  description:
    - Counts per outcome, failures, budget, halt reasons and per-host outcomes, as written to C(summary.json).
    - C(failures) lists every host that failed in this run, also when a rollback replaced its outcome since (the host entry's
      C(cause) keeps the outcome the rollback replaced); C(rolled_back) and C(rollback_failed) list those hosts; C(not_applicable)
      maps each host the patch does not apply to onto its installed version.
    - C(halted.trigger) says what stopped the run in words (the response policy to named host failures, the error budget, a fleet
      check, inconclusive checks).
    - URL userinfo, secret query parameters and secret headers are masked (C(rollout_policy.redaction)).
  returned: when not in check mode
  type: dict
paths:
  description: Paths of the run directory, plan, events and summary (the run state itself is in the store).
  returned: always
  type: dict
"""
