#!/usr/bin/python
# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: wave_gate
short_description: Decide after every rollout batch whether to continue, hold, halt or roll back
version_added: 1.0.0
description:
  - Runs once per batch on the controller (C(run_once), C(delegate_to=localhost)). Reads every batch host's apply result,
    probes each host's C(fleetpatch_health_url) concurrently, merges the outcomes into the run state by host, and
    checks the single error budget of the whole run.
  - Failures in the batch trigger the wave's response (quarantine, hold, halt, rollback_wave, rollback_all). A spent
    budget halts (or keeps a rollback response). The decision with every reason and measured value, the budget
    decision, a rollback it chooses and the end of a wave are returned as events (C(fleetpatch_events)); the event
    callback C(fleetpatch.rollout.events) writes them to the run's event log.
  - Runs the policy's synthetic checks and metric queries (C(checks), see M(fleetpatch.rollout.synthetic_checks)) on the
    batch's healthy hosts concurrently, compares with the pre-patch baseline and with hosts not patched yet, and judges
    the command checks the hosts ran (the C(command_checks) samples of their apply result, see O(command_result_var)).
    A host with a failed check is unhealthy; a failed metric query applies the response to the batch; an inconclusive
    check (no data) applies the policy's C(inconclusive_response), V(hold) by default, never continue.
  - After the last batch of a wave it waits the wave's bake time, then probes and checks the wave's hosts again.
  - After the last batch of the rollout, with C(stabilization.seconds) set, it keeps checking every host the run patched;
    the first breach applies C(stabilization.response) (V(rollback_all) by default) and returns the hosts to roll back.
  - This is an action plugin; it runs on the controller only.
author: fleetpatch developers (@fleetpatch)
extends_documentation_fragment:
  - fleetpatch.rollout._attributes
  - fleetpatch.rollout._run.per_batch
attributes:
  check_mode:
    support: full
    details: In check mode the decision is computed and returned, nothing is written and the bake time is skipped.
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
  result_var:
    description:
      - Name of the host variable that holds each host's apply result.
      - Its C(command_checks) key holds the samples of the command checks M(fleetpatch.rollout.patch_apply) ran in the same
        execution (O(fleetpatch.rollout.patch_apply#module:command_checks)).
    type: str
    default: __rollout_apply
  health_timeout:
    description: Seconds to wait for each health URL.
    type: float
    default: 5.0
  bake_seconds:
    description: Override the plan's bake time for this gate.
    type: float
  command_result_var:
    description:
      - Name of the host variable that holds each host's M(fleetpatch.rollout.command_checks) result, for playbooks that run
        the command checks as a task of their own.
      - Read only for a host whose apply result (O(result_var)) has no C(command_checks) key. A failed or unreachable
        result gives the host's command checks an V(unavailable) sample (inconclusive).
    type: str
    default: __rollout_command_checks
  check_workers:
    description: Maximum number of (check, host) pairs sampled at the same time.
    type: int
    default: 64
"""

EXAMPLES = r"""
- name: Gate the batch
  fleetpatch.rollout.wave_gate:
    # the plan result is read from localhost's __rollout_plan (plan_var), not templated into an argument
    run_id: "{{ hostvars['localhost']['__rollout_plan']['run_id'] }}"
  delegate_to: localhost
  run_once: true
  register: gate
"""

RETURN = r"""
action:
  description: V(continue), V(quarantine), V(hold), V(halt), V(rollback_wave) or V(rollback_all).
  returned: success
  type: str
stop:
  description: Whether no new host may start.
  returned: success
  type: bool
decision:
  description:
    - The decision with its reasons, failed hosts, failures across the run and the budget limit.
    - C(trigger) names what made the gate act in words, for example the response V(rollback_wave) of a wave to named hosts whose
      health check failed, or the error budget spent across the run, a failed fleet check or inconclusive checks; it is empty for
      V(continue). A host whose apply result says C(not_applicable) is its own outcome, never a failure.
  returned: success
  type: dict
rollback_hosts:
  description: Hosts to roll back.
  returned: success
  type: list
  elements: str
health:
  description: Health probe per host (ok, status, version, latency_ms, reason).
  returned: success
  type: dict
checks:
  description:
    - The check results of the decision (as M(fleetpatch.rollout.synthetic_checks) returns them), the conditions that
      fired, the hosts whose checks failed, failed metric queries and inconclusive checks. V(null) without checks.
  returned: success
  type: dict
stabilization:
  description: The stabilization window after the last batch (seconds, elapsed, rounds, checked_hosts).
  returned: when the policy sets a stabilization window and the last batch passed
  type: dict
"""
