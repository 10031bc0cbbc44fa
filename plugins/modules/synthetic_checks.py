#!/usr/bin/python
# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: synthetic_checks
short_description: Run synthetic checks against many hosts at once from the controller
version_added: 1.0.0
description:
  - Runs every check on every host of O(hosts) concurrently from the controller, in one task execution (threads, no
    module process per host). Each check takes C(samples) samples and returns V(pass), V(fail) or
    V(inconclusive) with the measured values (samples, error rate, consecutive errors, latency percentiles) next to the
    thresholds that applied.
  - "Kinds: V(http) requests (method, headers, body; expected status, body regex, JMESPath assertions on JSON bodies,
    maximum latency), multi-step journeys that pass captured values on (a token from a login answer), V(tcp) connect,
    V(dns) resolution and V(prometheus) instant queries (HTTP API C(/api/v1/query)) against a condition, evaluated once,
    not per host. V(command) checks run on the hosts themselves and are only evaluated by M(fleetpatch.rollout.wave_gate)."
  - Every HTTP request carries the correlation id in the C(X-Correlation-ID) header. Checks connect directly; proxies
    from the environment are not used.
  - "Templates are C(${name}): C(${host}) (inventory hostname), C(${var.NAME}) (any host variable), C(${capture.NAME})
    (captured by an earlier step), C(${run_id}), C(${patch_id}), C(${target_version}); Prometheus queries also know
    C(${hosts_regex}) (the checked hosts as a PromQL regex alternation) and C(${wave}). C($${) is a literal C(${)."
  - No data is never a pass. A check without any measured sample is V(inconclusive) unless it sets C(must_have_data=false).
  - With O(baseline=true) the checks that compare against a baseline are sampled on hosts not yet patched and the samples
    are kept with the rollout run (C(runs/<run_id>/baseline.json)); M(fleetpatch.rollout.wave_gate) compares against them.
    A host already patched by the run keeps its first baseline. The rollout role has M(fleetpatch.rollout.change_window)
    capture it, in the execution that opens the batch.
  - Spec errors (unknown keys, bad JMESPath or regex, a template that cannot be filled for some host) fail the task
    before any request is made.
  - This is an action plugin; it runs on the controller only.
author: fleetpatch developers (@fleetpatch)
extends_documentation_fragment:
  - fleetpatch.rollout._attributes
attributes:
  check_mode:
    support: full
    details: In check mode no request is made and nothing is written; the result has RV(status=skipped).
  diff_mode:
    support: none
  idempotent:
    support: full
    details: Checks only observe. With O(baseline=true) the run's baseline file is updated for hosts not patched yet.
options:
  hosts:
    description: Inventory hostnames to check. Their variables fill the C(${var.NAME}) templates.
    type: list
    elements: str
    required: true
  checks:
    description:
      - The checks, in the same form as the rollout policy's C(checks) key (see the README for every field).
      - Defaults to the checks of O(plan)'s policy.
    type: list
    elements: dict
  run_id:
    description:
      - The rollout run. Loaded from the run store - its attempt's correlation id, the outcomes of O(hosts), the hosts it
        skips and, for O(baseline=true), where the baseline is kept.
    type: str
  plan:
    description:
      - The registered result of M(fleetpatch.rollout.rollout_plan), read as data - the checks and the run's template
        names. Needs O(run_id).
      - Without it, a given O(run_id) reads the result from the variable O(plan_var) of C(localhost), as stored, without
        the copy of the whole plan (every host) a templated argument costs per batch.
    type: dict
  plan_var:
    description:
      - The variable of C(localhost) that holds the registered result of M(fleetpatch.rollout.rollout_plan), read when
        O(run_id) is given without O(plan).
    type: str
    default: __rollout_plan
  state_dir:
    description: Controller state directory. Default the plan's, else C($FLEETPATCH_STATE_DIR) or C(~/.local/state/fleetpatch).
    type: str
  baseline:
    description: Capture the pre-patch baseline of O(hosts) for the run instead of judging the checks. Needs O(run_id).
    type: bool
    default: false
  correlation_id:
    description: Value of the C(X-Correlation-ID) header. Defaults to the run's correlation id, else a new UUID.
    type: str
  fail_on:
    description:
      - V(fail) fails the task when a check fails; V(inconclusive) also when a check is inconclusive; V(never) only
        reports.
    type: str
    choices: [fail, inconclusive, never]
    default: fail
  workers:
    description: Maximum number of (check, host) pairs sampled at the same time.
    type: int
    default: 64
notes:
  - A sample of an V(http) journey is the whole journey; its latency is the sum of the steps. An answer with an
    unexpected status, a body that does not match, a failed JSON assertion or a step slower than its
    C(expect.max_latency_ms) is an error sample.
  - A V(prometheus) sample is an error when any series breaks the condition, no data when the result is empty (or NaN
    only), and unavailable when the server does not answer; C(max_consecutive_errors) limits runs of error and
    unavailable samples.
seealso:
  - module: fleetpatch.rollout.wave_gate
  - module: fleetpatch.rollout.rollout_plan
"""

EXAMPLES = r"""
- name: Log in and list items on every web host, 5 samples each
  fleetpatch.rollout.synthetic_checks:
    hosts: "{{ groups['segment_web'] }}"
    checks:
      - name: login-and-list
        samples: 5
        max_error_rate: 0
        latency_ms: {p95: 300}
        steps:
          - name: login
            method: POST
            url: "http://${var.fleet_address}:${var.fleet_port}/login"
            json: {user: synthetic}
            capture: {token: token}
          - name: items
            url: "http://${var.fleet_address}:${var.fleet_port}/api/items"
            headers: {Authorization: "Bearer ${capture.token}"}
            expect:
              status: 200
              json:
                - "length(items) > `0`"
  delegate_to: localhost
  run_once: true
  register: checked

- name: Error rate of the checked hosts from Prometheus, and a TCP connect
  fleetpatch.rollout.synthetic_checks:
    hosts: "{{ ansible_play_batch }}"
    fail_on: inconclusive
    checks:
      - name: error-rate
        kind: prometheus
        url: http://127.0.0.1:9090
        query: sum(rate(fleet_http_errors_total{host=~"${hosts_regex}"}[1m]))
        condition: {max: 0.05}
      - name: port-open
        kind: tcp
        address: "${var.fleet_address}"
        port: "${var.fleet_port}"
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
status:
  description: V(pass), V(fail) or V(inconclusive) over all results; V(captured) with O(baseline=true); V(skipped) in check mode.
  returned: always
  type: str
results:
  description:
    - One result per check and host (host V(*) for fleet-wide checks) with status, samples, measured, errors, nodata,
      unavailable, error_rate, consecutive_errors, latency_ms (p50, p90, p95, p99, max), values (metric checks),
      conditions (each with condition, measured, threshold and status), seen (first distinct error reasons) and reason.
  returned: unless O(baseline=true)
  type: list
  elements: dict
  sample:
    - check: items
      host: web-01
      status: fail
      samples: 5
      measured: 5
      errors: 5
      error_rate: 1.0
      conditions:
        - {condition: "error_rate <= 0", measured: 1.0, threshold: 0, status: fail}
      reason: "check items on web-01: fail: error_rate 1 > 0 (5 of 5 samples bad: items: HTTP 500, expected 200)"
fired:
  description: The conditions that decided a non-passing result, with check, host, measured value and threshold.
  returned: unless O(baseline=true)
  type: list
  elements: dict
host_failures:
  description: Host to the reason of its first failed check.
  returned: unless O(baseline=true)
  type: dict
baseline:
  description: Per host and check, the summary of the baseline samples just captured (samples, measured, error_rate, latency_ms).
  returned: when O(baseline=true)
  type: dict
kept:
  description: Hosts whose earlier baseline was kept because the run already patched them.
  returned: when O(baseline=true)
  type: list
  elements: str
"""
