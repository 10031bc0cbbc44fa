# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for fleetpatch.rollout.synthetic_checks: every check on every host at once, from the controller."""

from __future__ import annotations

import typing as t
import uuid

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._analysis import compact, summarize
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._checks import (
    CONTROLLER_KINDS,
    CheckError,
    normalize_checks,
    validate_targets,
)
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils import _probes
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._action import ControllerAction
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._run import RUN_VAR_OPTIONS, Run, RunStateError, plan_for_action, run_for_action
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store import StoreError, iso, utc_now

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
# a host at the target (or set aside) already: its first pre-patch baseline stays
_KEEP_BASELINE = ("patched", "quarantined", "unhealthy")


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
            return self._baseline(checks, hosts, t.cast(Run, run_state), names, correlation_id, task_vars, args["workers"])

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

    def _baseline(self, checks: list[dict[str, t.Any]], hosts: list[str], run_state: Run, names: dict[str, t.Any],
                  correlation_id: str, task_vars: dict[str, t.Any], workers: int) -> dict[str, t.Any]:
        """Sample the checks that compare against a baseline on hosts not patched yet; keep the samples with the run."""
        paths = run_state.paths
        known = run_state.hosts
        skip = set(run_state.skip_hosts)
        fresh = [host for host in hosts if host not in skip and known.get(host, {}).get("outcome") not in _KEEP_BASELINE]
        wanted = [check for check in checks if check["kind"] in CONTROLLER_KINDS and check.get("baseline")]
        sampled = _probes.run_jobs(_probes.jobs_for(wanted, _probes.contexts_for(fresh, wanted, task_vars, names), None),
                                   correlation_id=correlation_id, workers=workers)
        now = iso(utc_now())
        baselines = _probes.load_baselines(paths.run_dir)
        captured: dict[str, dict[str, t.Any]] = {}
        for host in fresh:
            entry = baselines.setdefault(host, {})
            for check in wanted:
                samples = sampled[check["name"]][host]
                entry[check["name"]] = {"captured_at": now, "samples": samples}
                summary = summarize(samples)
                captured.setdefault(host, {})[check["name"]] = {key: summary[key] for key in ("samples", "measured", "error_rate", "latency_ms")}
        if fresh and wanted:
            _probes.save_baselines(paths.run_dir, baselines)
            run_state.event("checks.baseline", ts=now, status="captured",
                            message=f"pre-patch baseline of {len(wanted)} check(s) on {len(fresh)} host(s)",
                            hosts=fresh, checks=[check["name"] for check in wanted], baseline=captured)
        kept = [host for host in hosts if host not in fresh]
        message = f"baseline of {len(wanted)} check(s) captured on {len(fresh)} host(s)"
        return {
            "changed": False,
            "status": "captured",
            "baseline": captured,
            "kept": kept,
            "path": _probes.baseline_path(paths.run_dir),
            "fleetpatch_events": run_state.events(),
            "msg": message + (f"; kept the earlier baseline of {len(kept)} host(s)" if kept else ""),
        }
