#!/usr/bin/python
# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: registry_record
short_description: Record a patch, a run and its outcome in the tamper-evident patch registry
version_added: 1.0.0
description:
  - Appends records to the patch registry, an append-only ledger in one SQLite file (default
    C(<state dir>/registry.sqlite3)) in which every record carries the sha256 of the record before it.
  - O(event=plan) records the patch once per manifest content (purpose, classification, severity, affected versions,
    regression risk, justification, artifact digests, the approval chain) and the start of the run (attempt, owner,
    AWX job, plan fingerprint, the event file). It returns C(fleetpatch_registry) so that the event callback
    C(fleetpatch.rollout.events) can seal the event log in the registry when the playbook ends.
  - O(event=finish) records the outcome (status, counts, failures, the gate decisions of this attempt as the timeline,
    the outcome of every host, rollbacks, the event file with its last seq and hash, whether the event log is complete,
    the summary digest), then writes a checkpoint of the chain head to its own file, signed when O(signing_key) is set.
  - O(event=prestaged) records that the patch was pre-staged (O(details) holds what to keep).
  - O(event=plan) also records an accepted emergency override (C(patch.override), status C(accepted) - ticket, requester,
    approvers, hosts, expiry, what it breaks); O(event=override_refused) records a refused one (status C(refused), the
    reason and the override as given, in O(details)), so every override is in the patch's record.
  - Values of secret variables (named in O(secret_vars) or named like C(*password*), C(*token*), C(*secret*)) are
    masked before anything is written; credentials in the artifact URL are dropped.
  - A requester who approves their own patch is refused, as are approvals without a requester and an out-of-band
    change without a justification.
  - This is an action plugin; it runs on the controller only.
author: fleetpatch developers (@fleetpatch)
extends_documentation_fragment:
  - fleetpatch.rollout._attributes
attributes:
  check_mode:
    support: full
    details: In check mode, and for a preview run, nothing is written.
  diff_mode:
    support: none
  idempotent:
    support: none
    details: Every call appends records; the patch record itself is only appended when the manifest changed.
options:
  event:
    description: What to record.
    type: str
    required: true
    choices: [plan, prestaged, finish, override_refused]
  run_id:
    description:
      - The run, for V(plan) and V(finish) (with O(plan)). Its document (attempts, outcomes, decisions, the skip list)
        and its attempt's correlation id, which every record of the attempt carries, are loaded from the run store.
    type: str
  plan:
    description: The registered result of M(fleetpatch.rollout.rollout_plan), read as data (patch, change, plan). Required with O(run_id).
    type: dict
  finish:
    description: The registered result of M(fleetpatch.rollout.rollout_finish), for V(finish).
    type: dict
  patch_id:
    description: The patch, when O(plan) is not given (V(prestaged), V(override_refused)).
    type: str
  details:
    description:
      - What to keep with a V(prestaged) record (for example C(hosts) and C(summary)) or a V(override_refused) one.
      - A refusal carries the correlation id M(fleetpatch.rollout.rollout_plan) chose (C(correlation_id)); the record takes it.
    type: dict
    default: {}
  state_dir:
    description: Controller state directory. Default the plan's, else C($FLEETPATCH_STATE_DIR) or C(~/.local/state/fleetpatch).
    type: str
  registry_path:
    description: The registry file. Default C($FLEETPATCH_REGISTRY) or C(<state dir>/registry.sqlite3).
    type: str
  checkpoint_dir:
    description: Where checkpoints go. Default C($FLEETPATCH_CHECKPOINT_DIR) or C(<state dir>/checkpoints).
    type: str
  signing_key:
    description: OpenSSH private key (no passphrase, or loaded in ssh-agent) that signs every checkpoint with C(ssh-keygen -Y sign -n fleetpatch-registry).
    type: path
  require_approval:
    description: Refuse a patch nobody approved.
    type: bool
    default: false
  secret_vars:
    description: Names of variables whose values are masked. Default C($FLEETPATCH_SECRET_VARS) (comma-separated).
    type: list
    elements: str
seealso:
  - module: fleetpatch.rollout.registry
"""

EXAMPLES = r"""
- name: Record the patch and this run
  fleetpatch.rollout.registry_record:
    event: plan
    run_id: "{{ __rollout_plan.run_id }}"
    plan: "{{ __rollout_plan }}"

- name: Record the outcome and checkpoint the chain (signed)
  fleetpatch.rollout.registry_record:
    event: finish
    run_id: "{{ __rollout_plan.run_id }}"
    plan: "{{ __rollout_plan }}"
    finish: "{{ __rollout_finish }}"
    signing_key: /etc/fleetpatch/registry_ed25519
"""

RETURN = r"""
registry:
  description: Path of the registry file.
  returned: when not in check mode
  type: str
recorded:
  description: The records appended (seq, kind, hash).
  returned: always
  type: list
  elements: dict
checkpoint:
  description: The checkpoint written after V(finish) (path, seq, head, signed, signature).
  returned: for event=finish
  type: dict
fleetpatch_registry:
  description: Where the registry is, for the event callback's seal at the end of the playbook.
  returned: for event=plan
  type: dict
"""
