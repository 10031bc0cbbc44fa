#!/usr/bin/python
# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: prestage_report
short_description: Report staged percent per region and gate a rollout on pre-staged hosts
version_added: 1.0.0
description:
  - Runs once on the controller (C(run_once), C(delegate_to=localhost)) after M(fleetpatch.rollout.prestage) ran on
    O(hosts). Reads every host's result from O(result_var) and reports how many hosts per region (C(fleet_region))
    hold a verified copy of the patch, the bytes moved per source (edge, origin), and why each other host is not ready
    (failed, unreachable, not staged).
  - Without O(run) (after C(playbooks/prestage.yml)), writes the report to
    C(<state_dir>/prestage/<patch_id>.json).
  - With O(run) (the rollout's readiness gate), writes C(runs/<run_id>/readiness.json), appends a C(readiness)
    event, and returns in RV(skip_hosts) the hosts the waves must not start on; with O(unstaged=stage) or
    O(unstaged=skip) those are recorded with outcome C(not_staged) in the run state (not a failure, the error
    budget does not count them). With O(unstaged=fail) no host is skipped; an apply without its artifact fails.
  - Without O(run) and unless O(save_records=false) or check mode, also keeps a record of every node's verified copy in
    the run-state store (C(fleetpatch_state_backend); table C(fp_staged)); a node whose result says it is not staged
    loses its record, a node without a result (not run) keeps it.
  - With O(run) and O(lookup=true) (the readiness gate's first step), reads those records only and returns the hosts
    they show staged (RV(staged)) and the hosts to check on the host (RV(check_hosts)); a later call with O(staged)
    counts the hosts of RV(staged) as ready without a result of their own.
  - This is an action plugin; it runs on the controller only.
author: fleetpatch developers (@fleetpatch)
extends_documentation_fragment:
  - fleetpatch.rollout._attributes
attributes:
  check_mode:
    support: full
    details: The report is computed and returned; nothing is written.
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  hosts:
    description: Hosts to report on (nodes).
    type: list
    elements: str
    required: true
  edges:
    description: Edge hosts, reported apart in RV(report) under C(edges).
    type: list
    elements: str
    default: []
  result_var:
    description: Name of the host variable that holds each host's M(fleetpatch.rollout.prestage) result.
    type: str
    default: __prestage_result
  patch:
    description:
      - The validated patch manifest (C(patch_id), C(service), C(target_version)).
      - Exactly one of O(patch) and O(patch_manifest) is required.
    type: dict
  patch_manifest:
    description:
      - Path of the patch manifest on the controller (found like the C(file) lookup finds files), loaded and validated
        by the task.
    type: str
  state_dir:
    description:
      - Controller state directory. Empty means C($FLEETPATCH_STATE_DIR) or C(~/.local/state/fleetpatch).
      - Ignored with O(run), whose own state directory is used.
    type: str
  run:
    description: The registered result of M(fleetpatch.rollout.rollout_plan), for the rollout's readiness gate.
    type: dict
  unstaged:
    description:
      - With O(run), what becomes of hosts that are not ready. V(stage) (the prestage step staged them first) and
        V(skip) keep them out of the waves; V(fail) lets them fail at apply time, against the error budget.
    type: str
    choices: [stage, skip, fail]
    default: skip
  fail_below:
    description: Fail the task when less than this percentage of O(hosts) is ready.
    type: float
    default: 0
  save_records:
    description: Without O(run), keep the records of the nodes' verified copies in the run-state store.
    type: bool
    default: true
  lookup:
    description:
      - With O(run), only look up the pre-staging records of O(hosts) for the run's artifact; nothing is written.
    type: bool
    default: false
  readiness:
    description: With O(lookup=true), V(auto) trusts usable records, V(host) trusts none (every host is checked).
    type: str
    choices: [auto, host]
    default: auto
  max_age:
    description: With O(lookup=true), seconds a record stays trusted; V(0) trusts none.
    type: int
    default: 604800
  staged:
    description: With O(run), the RV(staged) of the lookup - hosts counted as ready by their record.
    type: dict
    default: {}
"""

EXAMPLES = r"""
- name: Report staged percent per region
  fleetpatch.rollout.prestage_report:
    hosts: "{{ ansible_play_hosts_all }}"
    patch: "{{ patch }}"
    fail_below: 95
  delegate_to: localhost
  run_once: true
  register: prestage_report
"""

RETURN = r"""
report:
  description:
    - C(hosts), C(ready), C(percent); C(regions) per region with C(hosts), C(ready), C(percent), C(not_ready);
      C(not_ready) with the reason per host; C(bytes_by_source); C(edges) when O(edges) was given.
  returned: unless O(lookup=true)
  type: dict
  sample:
    hosts: 16
    ready: 15
    percent: 93.8
    regions:
      eu-west: {hosts: 8, ready: 8, percent: 100.0, not_ready: []}
      us-east: {hosts: 8, ready: 7, percent: 87.5, not_ready: [us-east-acme-web-prod-01]}
    not_ready: {us-east-acme-web-prod-01: "not enough free space in /srv/fleetpatch/cache/sha256 to stage 4c1e0f3b0a9d"}
    bytes_by_source: {edge: 3276800}
lines:
  description: The report as text, one line per region.
  returned: unless O(lookup=true)
  type: list
  elements: str
skip_hosts:
  description: With O(run), hosts the waves must not start on (not ready, and O(unstaged) is not V(fail)).
  returned: unless O(lookup=true)
  type: list
  elements: str
report_path:
  description: Where the report was written (or would be, in check mode).
  returned: unless O(lookup=true)
  type: str
patch:
  description: The patch manifest the report is about (validated).
  returned: unless O(lookup=true)
  type: dict
records:
  description: Without O(run), the records kept (C(saved)), dropped (C(dropped)) and where (C(store)).
  returned: when records were saved
  type: dict
  sample: {saved: 24, dropped: 0, store: run-state database /home/ops/.local/state/fleetpatch/fleetpatch.db}
staged:
  description: With O(lookup=true), the hosts staged by their record, with the record.
  returned: with O(lookup=true)
  type: dict
check_hosts:
  description: With O(lookup=true), the hosts to check on the host, in the order of O(hosts).
  returned: with O(lookup=true)
  type: list
  elements: str
"""
