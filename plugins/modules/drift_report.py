#!/usr/bin/python
# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: drift_report
short_description: Reconcile the patch level of every host with the desired state and write the drift report
version_added: 1.0.0
description:
  - Runs once on the controller. Takes the facts that M(fleetpatch.rollout.patch_facts) registered on the hosts of
    this run (O(hosts)) and, merged with them by host name, the facts files of earlier runs or of the slices of an AWX
    sliced job (O(facts_files)); the latest C(collected_at) of a host wins, so the merged report of slices is the
    report of one unsliced run.
  - Compares them with the desired state, a YAML or JSON file (O(desired_state), format in C(docs/drift.md)) with what
    every environment should run, the promotion order, the patches and the version lines that carry each fix,
    compatibility rules and time-to-patch targets. When the patch registry exists (O(registry)), its patches complete
    the list of patches, and an environment the file gives no version of a service takes the newest version a
    completed rollout installed there.
  - Gives every host and service one status, V(in_sync), V(drifted), V(missing_patch), V(unexpected_version),
    V(unknown) (unreachable, no data, corrupt or inconsistent host manifest, no desired state), V(not_applicable),
    V(quarantined) or V(unhealthy), never V(in_sync) without data; per environment and service the version alignment
    and broken compatibility rules; the patches each environment lacks that the one before it in the promotion order
    has, and since when; time to patch per severity against the targets. A fix delivered on several version lines is one remediation.
  - From the patch registry's host rows, a host whose latest rollout outcome for the service was quarantine is
    V(quarantined), one whose latest outcome was failed, unhealthy, unreachable, rolled back or rollback failed is
    V(unhealthy), whatever its facts say (the reason keeps both); a host the rollout of the patch that installs the
    desired version recorded as not applicable (installed version outside the patch's C(affected_versions)), and that
    still runs such a version, is V(not_applicable) instead of V(drifted) or V(missing_patch).
  - Writes the JSON report (schema C(docs/drift-report.schema.json); every other format is derived from it), a
    self-contained HTML page, a Markdown summary, JUnit XML (one test case per host and service) and Prometheus textfile
    metrics, each atomically, into O(output_dir).
  - This is an action plugin; it runs on the controller only and changes nothing on any host.
author: fleetpatch developers (@fleetpatch)
extends_documentation_fragment:
  - fleetpatch.rollout._attributes
attributes:
  check_mode:
    support: full
    details: Builds the same report and returns it; writes no file.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: Always reports C(changed=false); the reports are outputs, not managed state.
options:
  hosts:
    description:
      - Hosts of this run. A host without a result in O(facts_var) (it was unreachable, failed or was not in the run)
        is reported V(unknown) with the reason.
    type: list
    elements: str
    default: []
  facts_var:
    description: Host variable that holds each host's registered M(fleetpatch.rollout.patch_facts) result.
    type: str
    default: __reconcile_facts
  facts_files:
    description:
      - Facts files (JSON Lines, written with O(save_facts)) or glob patterns of them, merged with the facts of O(hosts).
      - A pattern that matches nothing is not an error; a plain path that does not exist is.
    type: list
    elements: str
    default: []
  save_facts:
    description:
      - Write the facts of O(hosts) (not those read from O(facts_files)) to this file, for a later merged report.
    type: str
  save_facts_to_store:
    description:
      - Save the facts of O(hosts) under this set name in the run-state store (C(fleetpatch_state_backend); with
        V(postgresql) the store the slices of an AWX sliced job share, no shared disk needed), one record per host in
        one transaction; a host saved again under the same name is replaced. Not written under check mode.
      - "A name is 1-128 letters, digits and C(._:@-), starting with a letter or digit."
    type: str
  facts_from_store:
    description:
      - Merge every record saved under this set name (O(save_facts_to_store)) into the report, by host name, beside
        O(hosts) and O(facts_files); the latest C(collected_at) of a host wins, so the slices' set gives the report of one
        unsliced run. A set that holds no record fails the task.
    type: str
  desired_state:
    description: Path of the desired-state file (YAML or JSON, see C(docs/drift.md)).
    type: str
  desired:
    description: Desired state given inline; its top-level keys replace those of O(desired_state).
    type: dict
  promotion:
    description: Promotion order of the environments, replacing the desired state's C(promotion).
    type: list
    elements: str
  slo_targets:
    description:
      - "Time-to-patch target per severity (for example C({critical: 7d, high: 30d})), taken from the patch policy.
        Replaces the desired state's C(slo.targets)."
    type: dict
    default: {}
  change_policy:
    description:
      - The rollout's change policy file (C(docs/policy.md)). Its profiles' time-to-patch targets become the report's targets
        per severity - for each severity, the strictest target of the profiles a security patch of that severity can
        select. Replaces the desired state's C(slo.targets); O(slo_targets) still wins over it.
    type: str
  registry:
    description: Read the patch registry when it exists. Nothing is ever written to it.
    type: bool
    default: true
  registry_path:
    description: The registry's SQLite file. Unset means C($FLEETPATCH_REGISTRY) or C(<state dir>/registry.sqlite3).
    type: str
  state_dir:
    description: Controller state directory. Unset means C($FLEETPATCH_STATE_DIR) or C(~/.local/state/fleetpatch).
    type: str
  output_dir:
    description: Where the reports go. Unset means C(<state dir>/reports/drift).
    type: str
  formats:
    description: Report formats to write.
    type: list
    elements: str
    choices: [json, html, markdown, junit, prometheus]
    default: [json, html, markdown, junit, prometheus]
  prometheus_path:
    description: Write the metrics here instead of O(output_dir), for example into node_exporter's textfile collector directory.
    type: str
  report:
    description: Build and write the report. V(false) only saves the facts (O(save_facts)), as a slice of a sliced job does.
    type: bool
    default: true
  fail_on_drift:
    description: Fail, after writing the reports, when any host and service has one of O(fail_statuses).
    type: bool
    default: false
  fail_statuses:
    description: Statuses that count as drift for O(fail_on_drift).
    type: list
    elements: str
    choices: [drifted, missing_patch, unexpected_version, unknown, not_applicable, quarantined, unhealthy]
    default: [drifted, missing_patch, unexpected_version, quarantined, unhealthy]
  now:
    description:
      - Evaluate lag and time to patch as of this UTC time (ISO 8601) instead of the current time, for reproducible reports.
    type: str
  title:
    description: Title of the HTML page and Markdown summary.
    type: str
    default: fleetpatch drift report
  html_max_rows:
    description: Rows of the drift list shown in the HTML page; the JSON report always holds every row.
    type: int
    default: 2000
notes:
  - Host attributes come from the inventory variables C(fleet_environment), C(fleet_region), C(fleet_tenant) and C(fleet_segment).
seealso:
  - module: fleetpatch.rollout.patch_facts
  - module: fleetpatch.rollout.registry
"""

EXAMPLES = r"""
- name: Build the drift report from this run's facts
  fleetpatch.rollout.drift_report:
    hosts: "{{ ansible_play_hosts_all }}"
    desired_state: /etc/fleetpatch/desired-state.yml
    fail_on_drift: true
  run_once: true
  delegate_to: localhost

- name: Merge the facts files of the slices of an AWX sliced job into one report
  fleetpatch.rollout.drift_report:
    facts_files:
      - /var/lib/fleetpatch/facts/job-{{ awx_workflow_job_id }}-slice-*.jsonl
    desired_state: /etc/fleetpatch/desired-state.yml
    prometheus_path: /var/lib/prometheus/node-exporter/fleetpatch_drift.prom

- name: In each slice of a sliced job (fleetpatch_state_backend=postgresql), save the slice's facts to the shared store
  fleetpatch.rollout.drift_report:
    hosts: "{{ ansible_play_hosts_all }}"
    save_facts_to_store: drift-{{ awx_workflow_job_id }}
    report: false
  run_once: true
  delegate_to: localhost

- name: In a later job, report from every slice's facts in the store
  fleetpatch.rollout.drift_report:
    facts_from_store: drift-{{ awx_workflow_job_id }}
    desired_state: /etc/fleetpatch/desired-state.yml
"""

RETURN = r"""
summary:
  description:
    - Counts per status (C(statuses)), C(drift) and C(drift_found), C(hosts), C(rows), C(environments), C(services),
      C(mixed_versions), C(compatibility_violations), C(lagging_patches), C(slo_overdue).
  returned: when a report was built
  type: dict
paths:
  description: Format to the path of its report file (written unless in check mode).
  returned: always
  type: dict
  sample: {json: /home/ops/.local/state/fleetpatch/reports/drift/drift-report.json}
fingerprint:
  description:
    - sha256 of the report's content without times of writing and gathering, and without the connection's wording of why a
      host was unreachable (the row keeps it); equal reports have equal fingerprints.
  returned: when a report was built
  type: str
matrix:
  description: One entry per environment and service with counts per status, the worst status and the desired version.
  returned: when a report was built
  type: list
  elements: dict
lag:
  description: Per pair of adjacent environments in the promotion order, the patches the later one lacks and the longest lag.
  returned: when a report was built
  type: list
  elements: dict
slo:
  description: Per severity, target, host counts within, late, open, overdue and unknown, share within target, target used, oldest overdue.
  returned: when a report was built
  type: list
  elements: dict
compatibility:
  description: Broken compatibility rules.
  returned: when a report was built
  type: list
  elements: dict
drift_sample:
  description: Up to 20 rows that are not in sync, worst first.
  returned: when a report was built
  type: list
  elements: dict
facts_file:
  description: The facts file written (O(save_facts)), or V(null).
  returned: always
  type: str
facts_stored:
  description: The facts set saved (O(save_facts_to_store)) as C(set), C(store) and C(hosts) (hosts that would be saved under check mode).
  returned: when O(save_facts_to_store) is set
  type: dict
inputs:
  description:
    - Facts files read, records skipped, registry used (or why not), desired state source.
    - C(registry.marks) counts the host and service pairs the registry marks V(quarantined) or V(unhealthy) and its
      V(not_applicable) records.
  returned: when a report was built
  type: dict
"""
