#!/usr/bin/python
# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: registry
short_description: Verify, query, export and prune the patch registry and its event files
version_added: 1.0.0
description:
  - V(verify) checks the registry's hash chain, every checkpoint (and its C(ssh-keygen) signature), and every event
    file the registry links or that lies under C(runs/), against the heads the registry recorded. Each edited, deleted,
    reordered, duplicated or truncated record or line is reported with its place; the task fails when one is found.
    A torn last line of an event file (a killed run) is a warning, not tampering.
  - V(patches) lists patches with their state (registered, approved, prestaged, running, rolled_out, halted, held,
    rolled_back, rollback_failed, interrupted); V(hosts) the latest outcome of every host of a patch; V(timeline) a
    patch's whole record and timeline.
  - V(export) writes every record as one JSON line under C(<state dir>/exports) (verifiable alone with
    O(export_file)) and records the export.
  - V(retention) removes event files older than O(events_max_age_days) (never those of a run holding a lock) and
    exports older than O(exports_max_age_days) (keeping the O(keep_exports) newest). What goes is recorded in the
    registry first, so V(verify) reports those files as pruned. O(dry_run) (or check mode) only lists.
  - The same commands run from a shell with C(bin/fleetpatch-registry).
  - This is an action plugin; it runs on the controller only.
author: fleetpatch developers (@fleetpatch)
extends_documentation_fragment:
  - fleetpatch.rollout._attributes
attributes:
  check_mode:
    support: full
    details: V(export) and V(retention) only report what they would do.
  diff_mode:
    support: none
  idempotent:
    support: partial
    details: V(verify) and the queries change nothing; V(export) writes a new export each time.
options:
  command:
    description: What to do.
    type: str
    required: true
    choices: [verify, patches, hosts, timeline, export, retention]
  state_dir:
    description: Controller state directory. Default C($FLEETPATCH_STATE_DIR) or C(~/.local/state/fleetpatch).
    type: str
  registry_path:
    description: The registry file. Default C($FLEETPATCH_REGISTRY) or C(<state dir>/registry.sqlite3).
    type: str
  checkpoint_dir:
    description: Checkpoint directory. Default C($FLEETPATCH_CHECKPOINT_DIR) or C(<state dir>/checkpoints).
    type: str
  export_dir:
    description: Export directory. Default C(<state dir>/exports).
    type: str
  export_file:
    description: With V(verify), check this export instead of the registry.
    type: path
  allowed_signers:
    description: With V(verify), an ssh C(allowed_signers) file every checkpoint signature must verify against; an unsigned checkpoint is then a finding.
    type: path
  signer_identity:
    description: The signer's identity in O(allowed_signers).
    type: str
    default: fleetpatch
  patch_id:
    description: The patch, for V(hosts) and V(timeline).
    type: str
  state:
    description: With V(patches), only patches in this state.
    type: str
    choices: [registered, approved, prestaged, running, rolled_out, halted, held, rolled_back, rollback_failed, interrupted]
  events_max_age_days:
    description: With V(retention), remove event files last written this many days ago or earlier.
    type: float
  exports_max_age_days:
    description: With V(retention), remove exports this old or older.
    type: float
  keep_exports:
    description: With V(retention), always keep this many of the newest exports.
    type: int
    default: 1
  dry_run:
    description: List what V(retention) or V(export) would do, change nothing.
    type: bool
    default: false
seealso:
  - module: fleetpatch.rollout.registry_record
"""

EXAMPLES = r"""
- name: Verify the registry, its checkpoints and the event files
  fleetpatch.rollout.registry:
    command: verify
    allowed_signers: /etc/fleetpatch/allowed_signers

- name: Patches that were rolled back
  fleetpatch.rollout.registry:
    command: patches
    state: rolled_back
  register: rolled_back

- name: What would a 90-day retention remove
  fleetpatch.rollout.registry:
    command: retention
    events_max_age_days: 90
    exports_max_age_days: 365
    dry_run: true
"""

RETURN = r"""
ok:
  description: With V(verify), whether nothing was tampered with.
  returned: command=verify
  type: bool
findings:
  description: With V(verify), one line per finding (severity, kind, place, message).
  returned: command=verify
  type: list
  elements: str
report:
  description: With V(verify), the full report (registry head, checkpoints, event files, findings).
  returned: command=verify
  type: dict
patches:
  description: Patch id, state, version, severity, requester, approvers, runs, last run, host counts per outcome.
  returned: command=patches
  type: list
  elements: dict
hosts:
  description: Host, outcome, wave, batch, time and reason.
  returned: command=hosts
  type: list
  elements: dict
timeline:
  description: The patch's record and its timeline (at, what, detail).
  returned: command=timeline
  type: dict
export:
  description: Path, records, head and sha256 of the export.
  returned: command=export
  type: dict
retention:
  description: Files to remove (remove), kept and why (keep), removed, and the registry record of the removal.
  returned: command=retention
  type: dict
"""
