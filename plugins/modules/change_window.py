#!/usr/bin/python
# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: change_window
short_description: Check the change calendar before a rollout batch starts
version_added: 1.0.0
description:
  - Runs once per batch on the controller (C(run_once), C(delegate_to=localhost)), before any host of the batch is
    touched. Evaluates the change calendar of the plan (maintenance windows, freezes, peak business hours, release
    blackouts, each in its own time zone) for every host of the batch at one UTC instant.
  - The profile the plan chose says which rules bind (C(require_window), C(avoid_peak), C(avoid_releases)); a freeze
    always binds, unless an accepted emergency override names the host, breaks freezes and has not expired.
  - When the batch may not start, the run pauses. The run state gets status C(waiting_window) with the reasons and the
    next opening, the event C(window.checked) (status V(waiting)) is queued, and RV(stop) tells the play to end. Running
    the rollout again resumes it, as after a hold.
  - When the batch may start and the plan's policy has checks with a baseline (the plan result's C(checks.baseline)), the
    same execution samples those checks on the hosts of the play batch that are not patched yet and keeps the samples with
    the run (C(runs/<run_id>/baseline.json)), as M(fleetpatch.rollout.synthetic_checks) with C(baseline=true)
    does; a host patched by an earlier attempt keeps its first baseline. Nothing is sampled in check mode.
  - Returns the events C(window.checked), C(override.applied) when an override let hosts through and C(checks.baseline)
    when a baseline was captured, for the event callback C(fleetpatch.rollout.events).
  - This is an action plugin; it runs on the controller only. See C(docs/policy.md).
author: fleetpatch developers (@fleetpatch)
extends_documentation_fragment:
  - fleetpatch.rollout._attributes
  - fleetpatch.rollout._run.per_batch
attributes:
  check_mode:
    support: full
    details: In check mode the answer is computed and returned; nothing is written.
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  readiness_var:
    description:
      - In check mode only (no run is stored), the host variable that holds the result of
        M(fleetpatch.rollout.prestage_report), whose C(skip_hosts) the dry run keeps out. Otherwise the run's skip list is
        read from the run store.
    type: str
    default: __rollout_readiness
  clock:
    description:
      - For tests only. The UTC instant (ISO 8601 with C(Z)) the calendar is evaluated at, instead of the controller's clock.
      - C($FLEETPATCH_CLOCK) does the same when this is not set.
    type: str
"""

EXAMPLES = r"""
- name: Check the change calendar before the batch starts (controller, once)
  fleetpatch.rollout.change_window:
    # the plan result is read from localhost's __rollout_plan (plan_var), not templated into an argument
    run_id: "{{ hostvars['localhost']['__rollout_plan']['run_id'] }}"
  delegate_to: localhost
  run_once: true
  register: window

- name: Stop starting new hosts outside the window
  ansible.builtin.meta: end_play
  when: window.stop
"""

RETURN = r"""
fits:
  description: Whether every host of the batch may start now.
  returned: success
  type: bool
stop:
  description: The opposite of RV(fits); the play should end without touching the batch.
  returned: success
  type: bool
reasons:
  description: Why the batch waits, such as C(freeze year-end until 2027-01-05T00:00:00Z) or C(outside maintenance window eu-nightly).
  returned: success
  type: list
  elements: str
notes:
  description: Open windows (with their end) and what an override let through.
  returned: success
  type: list
  elements: str
blocked_hosts:
  description: Hosts of the batch that may not start.
  returned: success
  type: list
  elements: str
next_open:
  description: The first instant (UTC) at which the whole batch may start, or null when nothing opens within 400 days.
  returned: success
  type: str
clock:
  description: The instant the calendar was evaluated at.
  returned: success
  type: str
clock_source:
  description: V(controller), V(rollout_clock) or V(FLEETPATCH_CLOCK).
  returned: success
  type: str
skip_hosts:
  description:
    - The hosts this attempt of the run leaves alone (quarantined earlier, not ready), from the run store. The batch's
      tasks skip them; nothing else hands the skip list to the play.
  returned: success
  type: list
  elements: str
baseline:
  description:
    - The pre-patch baseline captured for the batch - C(status) (V(captured)), C(baseline) (host -> check -> summary of
      the samples), C(kept) (hosts that keep an earlier baseline), C(path) and C(msg).
  returned: when the batch may start, the policy has checks with a baseline and not in check mode
  type: dict
fleetpatch_events:
  description: C(window.checked), C(override.applied) when an override let hosts through, C(checks.baseline) when a baseline
    was captured, for the event callback.
  returned: when not in check mode
  type: list
  elements: dict
"""
