#!/usr/bin/python
# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: rollout_plan
short_description: Compile, validate and save a staged rollout plan on the controller
version_added: 1.0.0
description:
  - Validates the patch manifest, the fleet attributes of every target host and the rollout policy, then compiles the
    plan (canary, waves, batches, disruption budgets, one error budget) with the pure planner in
    C(plugins/plugin_utils/_plan.py).
  - The plan is byte-identical for the same inventory attributes, policy and patch id. It is saved as
    C(runs/<run_id>/plan.json) in the controller state directory, where C(run_id) is the patch id, so running the same
    patch again resumes the same run.
  - Before planning, applies the change policy (C(docs/policy.md)) - validates the manifest's change fields (change type,
    classification, justification, affected versions, regression risk, requester, approvers; the severity inputs of a
    security patch) with an argument spec, scores the severity of a security patch, and picks the policy profile by
    change type, classification and severity. The profile's rollout keys are the defaults of O(policy).
  - Validates an emergency O(override) (justification, ticket, approvers who are not the requester, expiry, scope) and
    evaluates the change calendar for every wave at the run's clock; the plan and its preview show which waves fit now
    and when the others may start. M(fleetpatch.rollout.change_window) checks again before every batch.
  - Takes a lock over the planned hosts. A live lock of another run over any of them refuses the run; a stale lock is
    reported and only broken with O(break_lock=true) (or taken over when it belongs to an earlier attempt of this run).
  - Every input is checked before any host is touched (C(docs/security.md)). Strings are matched whole and bounded -
    patch id, service, versions and the host variables C(fleet_region), C(fleet_tenant), C(fleet_segment),
    C(fleet_environment) at most 128 characters (group names use letters, digits and C(._:@+-)), paths and URLs 4096, free
    text 65536, no control characters. C(fleetpatch_health_url) and the artifact URLs must parse (scheme V(http),
    V(https) or V(file) for artifacts, a host, no whitespace); C(fleetpatch_host_root) is an absolute path,
    C(fleetpatch_restart_command) an argv list or a string. An error names the field, the value (its first 40 characters
    and its length) and the host or file. Check mode and O(preview=true) report the same errors.
  - The manifest, change policy and override files are read with a strict loader - a duplicate key is an error naming the
    file and key, an alias bomb (more than a million nodes once aliases are expanded) or a file over 32 MiB is refused;
    vault-encrypted files still load.
  - A target older than C(base_version) or any of C(affected_versions) is refused unless the manifest sets
    C(allow_downgrade=true) with a non-empty C(downgrade_justification); an allowed downgrade is in the plan and the
    first line of the plan text (C(DOWNGRADE 1.2.0 -> 1.1.0 allowed) and the justification).
  - The result shows artifact URLs with their userinfo replaced by C(***); the role hands the URLs as written to the
    apply step through a C(no_log) task (P(fleetpatch.rollout.artifact_urls#lookup)).
  - This is an action plugin; it runs on the controller only and never touches a target host.
author: fleetpatch developers (@fleetpatch)
extends_documentation_fragment:
  - fleetpatch.rollout._attributes
attributes:
  check_mode:
    support: full
    details: In check mode, and with O(preview=true), the plan is compiled and returned but nothing is written and no lock is taken.
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  manifest:
    description: Path to the patch manifest (YAML or JSON), or the manifest as a mapping.
    type: raw
    required: true
  targets:
    description: Inventory hostnames to patch. Hosts with C(fleet_role=edge) are left out with a warning.
    type: list
    elements: str
    required: true
  policy:
    description: The rollout policy. See the README for every key.
    type: dict
    default: {}
  state_dir:
    description: Controller state directory. Defaults to C($FLEETPATCH_STATE_DIR) or C(~/.local/state/fleetpatch).
    type: str
  preview:
    description: Compile and return the plan; write nothing, lock nothing.
    type: bool
    default: false
  break_lock:
    description: Break a stale lock of another run over the same hosts.
    type: bool
    default: false
  lock_ttl:
    description: Seconds the lock stays valid without a heartbeat.
    type: int
    default: 1800
  retry_quarantined:
    description: Do not skip hosts that an earlier attempt of this run quarantined.
    type: bool
    default: false
  replan:
    description: Continue an earlier attempt of this patch even though the plan fingerprint changed.
    type: bool
    default: false
  require_approval:
    description:
      - Kept for compatibility. Approvers (C(approvals) or C(approved_by)) are mandatory change fields, so a patch nobody
        approved is always refused; so are a requester (C(requested_by)) who approves their own patch and approvals without
        a requester, before any host is touched.
    type: bool
    default: false
  change_policy:
    description:
      - The change policy (profiles, calendar, override rules, severity weights), as a path to a YAML/JSON file or a
        mapping. Omitted means the built-in profiles and no calendar rule. See C(docs/policy.md).
    type: raw
  override:
    description:
      - An emergency override, as a path to a YAML/JSON file or a mapping (C(patch_id), C(hosts), C(justification),
        C(ticket), C(requested_by), C(approvers), C(expires), C(breaks)). Refused unless complete, unexpired, for this
        patch and its targets, approved by enough people other than the requester, and allowed by the profile.
    type: raw
  clock:
    description:
      - For tests only. The UTC instant (ISO 8601 with C(Z)) at which the calendar is evaluated, instead of the controller's
        clock. C($FLEETPATCH_CLOCK) does the same when this is not set.
    type: str
"""

EXAMPLES = r"""
- name: Preview the plan for a patch
  fleetpatch.rollout.rollout_plan:
    manifest: /srv/patches/myapp-1.0.1.yml
    change_policy: /srv/patches/change-policy.yml
    targets: "{{ query('ansible.builtin.inventory_hostnames', 'fleet_nodes') }}"
    policy:
      canary: {size: 1, groups: ["region=eu-west"]}
      waves: ["25%", "100%"]
      disruption_budget: {segment: 1}
      error_budget: "5%"
    preview: true
  register: plan
"""

RETURN = r"""
run_id:
  description: Run id (the patch id made filesystem-safe).
  returned: success
  type: str
plan:
  description: The compiled plan (waves, batches, serial sizes, host order, error budget, fingerprint).
  returned: success
  type: dict
plan_text:
  description: The plan as a human-readable table.
  returned: success
  type: str
serial:
  description: Batch sizes in plan order, for the rollout play's C(serial).
  returned: success
  type: list
  elements: int
host_order:
  description: Hosts in plan order.
  returned: success
  type: list
  elements: str
skip_hosts:
  description:
    - Hosts an earlier attempt quarantined (unless O(retry_quarantined)). They start this attempt's skip list, kept in
      the run store; M(fleetpatch.rollout.change_window) hands the run's list (with the readiness gate's) to every batch.
  returned: success
  type: list
  elements: str
preview:
  description: Whether this was a preview (nothing written).
  returned: success
  type: bool
patch:
  description:
    - The validated patch manifest. C(artifact.url) and C(artifact.delta.url) have their userinfo replaced by C(***)
      (C(url_redacted) says whether it was). C(affected_versions) (V([]) means any installed version) and C(allow_downgrade)
      are always present.
  returned: success
  type: dict
downgrade:
  description: The allowed downgrade (C(from), C(to), C(justification)), or V(null) when the target is not older.
  returned: success
  type: dict
state_backend:
  description:
    - Where the run's state lives - the variable C(fleetpatch_state_backend), V(embedded) (default, the SQLite file
      C(fleetpatch.db) under O(state_dir); V(sqlite) names the same file) or V(postgresql) (docs/state.md).
      The later rollout actions open the run in this store; an unknown name stops the plan before any host is touched.
  returned: success
  type: str
written:
  description: Files this task wrote (none in a preview).
  returned: success
  type: list
  elements: str
plan_path:
  description: Where the plan is saved; V(null) in a preview, which writes nothing.
  returned: success
  type: str
events_path:
  description: The run's JSON-lines event file; V(null) in a preview.
  returned: success
  type: str
correlation_id:
  description:
    - Correlation id of this attempt, chosen here once and stored in the attempt - C(FLEETPATCH_CORRELATION_ID), the
      extra var C(fleetpatch_correlation_id), the AWX job, the ansible-runner ident (the event callback's rules, applied
      to the same inputs), else a new UUID.
    - Every event (the callback adopts it from RV(fleetpatch_correlation)), every patch registry record and every check
      request of the attempt carries it.
  returned: always
  type: str
fleetpatch_correlation:
  description: The attempt's correlation id and its source, for the event callback; also in a failed result.
  returned: always
  type: dict
change:
  description:
    - The change as the policy sees it - change type, classification, severity (and its score for a security patch),
      regression risk, profile, the profile's calendar constraints, time to patch, the rollout keys given in O(policy)
      that replaced the profile's, the calendar, the accepted override, the clock and where it came from.
  returned: success
  type: dict
schedule:
  description: Every wave at the run's clock - C(wave), C(fits), C(reasons), C(notes), C(blocked_hosts), C(next_open).
  returned: success
  type: list
  elements: dict
override_refused:
  description: A refused override (status, reason, the override as given), which the role records in the patch registry.
  returned: when an override was refused
  type: dict
fleetpatch_events:
  description:
    - The run's domain events (C(run.started), C(plan.compiled), C(change.classified), C(override.accepted)) for the
      event callback, the only writer of the event log.
  returned: when not a preview
  type: list
  elements: dict
fleetpatch_run:
  description: What the event callback needs to record this run (run id, event file, each host's wave and fleet attributes).
  returned: when not a preview
  type: dict
"""
