# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for fleetpatch.rollout.synthetic_checks: every check on every host at once, from the controller."""

from __future__ import annotations

import typing as t
import uuid

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._analysis import compact
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._checks import CheckError, normalize_checks, validate_targets
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils import _probes
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._action import ControllerAction
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._run import RUN_VAR_OPTIONS, Run, RunStateError, plan_for_action, run_for_action
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store import StoreError

ARGUMENT_SPEC = {
    "hosts": {"type": "list", "elements": "str", "required": True},
    "checks": {"type": "list", "elements": "dict"},
    # optional here: checks given directly need no run (a plan needs its run_id; with a run_id alone the plan result is read
    # from plan_var)
    **{name: dict(spec, required=False) for name, spec in RUN_VAR_OPTIONS.items()},
    "baseline": {"type": "bool", "default": False},
    "correlation_id": {"type": "str"},
    "fail_on": {"type": "str", "choices": ["fail", "inconclusive", "never"], "default": "fail"},
    "workers": {"type": "int", "default": _probes.DEFAULT_WORKERS},
}


class ActionModule(ControllerAction):
    argument_spec = ARGUMENT_SPEC
    argument_constraints = {"required_by": {"plan": "run_id"}}
    errors = (CheckError, RunStateError, StoreError)

    def _act(self, args: dict[str, t.Any], task_vars: dict[str, t.Any]) -> dict[str, t.Any]:
        # run: the plan's immutable outputs (data); the run itself is loaded by its id when a baseline is kept with it
        run = (plan_for_action(args, task_vars) or {}) if args["run_id"] else {}
        if args["run_id"] and not isinstance(run.get("plan"), t.Mapping):
            raise CheckError(f"run {args['run_id']}: no plan result; pass the registered result of fleetpatch.rollout.rollout_plan as plan,"
                             f" or name the variable of localhost that holds it (plan_var, now {args['plan_var']!r})")
        if args["checks"] is not None:
            checks = normalize_checks(args["checks"], "checks")
        elif run:
            checks = list(run["plan"]["policy"].get("checks") or [])
        else:
            raise CheckError("give checks, or run_id and plan (the registered result of fleetpatch.rollout.rollout_plan) to use its"
                             " policy's checks")
        if args["baseline"] and not run:
            raise CheckError("baseline=true needs run_id and plan: the baseline is kept with the rollout run")
        hosts = list(dict.fromkeys(args["hosts"]))
        names = _probes.run_names(run) if run else {}
        validate_targets(checks, _probes.contexts_for(hosts, checks, task_vars, names), "checks")
        if self._task.check_mode or run.get("preview"):
            return {"changed": False, "skipped": True, "status": "skipped", "results": [], "msg": "check mode: no check was run"}
        # the outcomes of the hosts checked only (a batch's baseline reads no other host's)
        run_state = run_for_action(run_id=args["run_id"], plan=run, state_dir=args["state_dir"], check_mode=False, hosts=hosts) if run else None
        # the attempt's correlation id: the X-Correlation-ID of every request, as its events and registry rows carry it
        correlation_id = args["correlation_id"] or (run_state.correlation_id if run_state else None) or str(uuid.uuid4())
        if args["baseline"]:
            state = t.cast(Run, run_state)
            captured = _probes.capture_baseline(checks, hosts, run_state=state, task_vars=task_vars, run_context=names, correlation_id=correlation_id,
                                                workers=args["workers"])
            return {"changed": False, **captured, "fleetpatch_events": state.events()}

        results, outcome = _probes.evaluate(
            checks, hosts, task_vars=task_vars, run_context=names, correlation_id=correlation_id, wave=str(run.get("wave", "")), workers=args["workers"]
        )
        failed = (outcome.status == "fail" and args["fail_on"] != "never") or (outcome.status == "inconclusive" and args["fail_on"] == "inconclusive")
        lines = [result["reason"] for result in results if result["status"] != "pass"]
        return {
            "changed": False,
            "failed": failed,
            "status": outcome.status,
            "results": [compact(result) for result in results],
            "fired": [dict(item) for item in outcome.fired],
            "host_failures": dict(outcome.host_failures),
            "correlation_id": correlation_id,
            "msg": f"{len(results)} check result(s): {outcome.status}" + (": " + "; ".join(lines) if lines else ""),
        }
