# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to fleetpatch.rollout: the options of the controller steps that work on a planned run. Not a public API."""

from __future__ import annotations


class ModuleDocFragment:
    # One description of how a step finds its run: by id, in the run store, with the plan result as data.
    DOCUMENTATION = r"""
options:
  run_id:
    description:
      - The run to work on (the C(run_id) M(fleetpatch.rollout.rollout_plan) returns). Its state (status, host outcomes, error
        budget, the hosts this attempt skips, the attempt's correlation id) is loaded from the run store by this id.
    type: str
    required: true
  plan:
    description:
      - The registered result of M(fleetpatch.rollout.rollout_plan), read as data only (plan, patch, change policy,
        checks, state backend). In check mode and previews, which store no run, a dry run is rebuilt from it.
    type: dict
    required: true
  state_dir:
    description: Controller state directory. Default the plan's, else C($FLEETPATCH_STATE_DIR) or C(~/.local/state/fleetpatch).
    type: str
"""

    # The steps that run once per batch (change_window, wave_gate): the plan result is read by variable name, because an
    # argument templated from it costs a walk and a copy of the whole plan (every host) per batch.
    PER_BATCH = r"""
options:
  run_id:
    description:
      - The run to work on (the C(run_id) M(fleetpatch.rollout.rollout_plan) returns). Its state (status, host outcomes, error
        budget, the hosts this attempt skips, the attempt's correlation id) is loaded from the run store by this id; only
        the outcomes of the batch's hosts are read, others only when a decision needs them (bake, rollback).
    type: str
    required: true
  plan:
    description:
      - The registered result of M(fleetpatch.rollout.rollout_plan), read as data only (plan, patch, change policy,
        checks, state backend). In check mode and previews, which store no run, a dry run is rebuilt from it.
      - Optional; without it the result is read from the variable O(plan_var) of C(localhost), as stored, without a copy.
        Passing it templates and copies the whole plan (every host) for every batch.
    type: dict
  plan_var:
    description:
      - The variable of C(localhost) that holds the registered result of M(fleetpatch.rollout.rollout_plan), read when
        O(plan) is not given.
    type: str
    default: __rollout_plan
  state_dir:
    description: Controller state directory. Default the plan's, else C($FLEETPATCH_STATE_DIR) or C(~/.local/state/fleetpatch).
    type: str
"""
