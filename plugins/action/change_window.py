# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for fleetpatch.rollout.change_window: may this batch start now (and its pre-patch baseline)? Controller only."""

from __future__ import annotations

import typing as t
import uuid

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils import _probes
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._calendar import (
    SCOPE_KEYS,
    CalendarError,
    iso_z,
    parse_calendar,
)
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._checks import CheckError
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._policy import constraints, evaluate_wave
from ansible_collections.fleetpatch.rollout.plugins.module_utils._errors import FleetpatchError
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._action import ControllerAction
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._controller import batch_result, controller_identity, decision_clock, host_vars
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._run import (
    RUN_VAR_OPTIONS,
    Run,
    RunStateError,
    plan_for_action,
    play_batch_index,
    run_for_action,
)
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._slices import SliceError, before_batch, slice_from_plan
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store import StoreError, iso, utc_now

ARGUMENT_SPEC = {
    **RUN_VAR_OPTIONS,
    "clock": {"type": "str"},
    # check mode stores no run, so the readiness gate's skip list reaches the dry run through its registered result
    "readiness_var": {"type": "str", "default": "__rollout_readiness"},
}


class WindowError(FleetpatchError):
    """The batch cannot be checked against the calendar."""


class ActionModule(ControllerAction):
    argument_spec = ARGUMENT_SPEC
    errors = (WindowError, CalendarError, CheckError, RunStateError, StoreError, SliceError)

    def _act(self, args: dict[str, t.Any], task_vars: dict[str, t.Any]) -> dict[str, t.Any]:
        planned = plan_for_action(args, task_vars) or {}
        plan = planned.get("plan")
        change = planned.get("change")
        if not isinstance(plan, t.Mapping) or not isinstance(change, t.Mapping):
            raise WindowError(f"plan has no plan or change policy: pass the registered result of fleetpatch.rollout.rollout_plan as plan,"
                              f" or name the variable of localhost that holds it (plan_var, now {args['plan_var']!r})")
        check_mode = bool(self._task.check_mode or planned.get("preview"))
        # no host outcome is needed to check the calendar: none is read (hosts=()), so the step costs O(batch), not O(fleet)
        run_state = run_for_action(run_id=args["run_id"], plan=planned, state_dir=args["state_dir"], check_mode=check_mode, hosts=())
        if run_state.dry_run:
            run_state.skip((batch_result(task_vars, args["readiness_var"]) or {}).get("skip_hosts") or [])
        indexes = play_batch_index(planned, task_vars.get("ansible_play_batch", []))
        if len(indexes) != 1:
            raise WindowError(f"cannot tell which plan batch is starting: play batch maps to batches {sorted(indexes)}")
        index = indexes.pop()
        batch = plan["batches"][index]
        wave = plan["waves"][batch["wave"]]
        skip = set(run_state.skip_hosts)
        hosts = [host for host in batch["hosts"] if host not in skip]
        ctx = slice_from_plan(planned)
        if ctx is not None and not check_mode:
            # a slice starts its part of a batch once every slice finished the one before, and not after a halt or a spent budget
            sliced = before_batch(run_state.store, ctx, run_id=run_state.run_id, plan=plan, index=index, identity=controller_identity(task_vars))
            for dead in sliced["dead"]:
                run_state.event("slice.dead", batch=index, wave=wave["name"], status="dead", slice=dead["slice"], expired=dead["expired"],
                                message=f"slice {dead['slice']} lost its lease at {dead['expired']}: not waited for")
            if sliced["stop"]:
                return self._slice_stop(run_state, sliced, index=index, wave=wave["name"], task_vars=task_vars)
            # the other slices' hosts of this batch are theirs (their variables are not in this slice's inventory)
            playing = set(task_vars.get("ansible_play_batch", []))
            hosts = [host for host in hosts if host in playing]
        scopes = self._scopes(planned, hosts, task_vars)
        now, clock_source = decision_clock(args["clock"])
        limits = constraints(change["constraints"], change.get("override"))
        found = evaluate_wave(parse_calendar(change["calendar"]), scopes, now, limits)
        at = iso_z(now)
        overridden = [note for note in found["notes"] if note.startswith("override: ")]
        if found["fits"]:
            msg = f"batch {index} ({wave['name']}) may start at {at}" + (f": {'; '.join(found['notes'])}" if found["notes"] else "")
        else:
            msg = (f"batch {index} ({wave['name']}) waits: {'; '.join(found['reasons'])}; "
                   + (f"next opening {found['next_open']}" if found["next_open"] else "no opening within 400 days")
                   + "; re-run the rollout then to resume")
        result: dict[str, t.Any] = {"changed": False, "batch": index, "wave": wave["name"], "fits": found["fits"], "stop": not found["fits"],
                                    "reasons": found["reasons"], "notes": found["notes"], "blocked_hosts": found["blocked_hosts"],
                                    "next_open": found["next_open"], "clock": at, "clock_source": clock_source, "check_mode": check_mode,
                                    # the hosts of this attempt the play leaves alone (quarantined, not ready): from the run
                                    "skip_hosts": run_state.skip_hosts, "msg": msg}
        if check_mode:
            return result
        common = {"batch": index, "wave": wave["name"], "clock": at, "clock_source": clock_source}
        run_state.event("window.checked", status="open" if found["fits"] else "waiting", message=msg, **common, reasons=found["reasons"],
                        notes=found["notes"], blocked_hosts=found["blocked_hosts"], next_open=found["next_open"], hosts=len(hosts))
        if overridden and found["fits"]:
            override = change["override"]
            run_state.event("override.applied", status="applied",
                            message=f"override {override['ticket']} lets batch {index} through: "
                                    + "; ".join(note[len("override: "):] for note in overridden),
                            **common, ticket=override["ticket"], expires=override["expires"], broken=overridden,
                            hosts=sorted(set(hosts) & set(override["hosts"])))
        if not found["fits"]:
            self._wait(run_state, found, clock=at, batch=index, wave=wave["name"])
        elif (planned.get("checks") or {}).get("baseline"):
            # the batch may start: its pre-patch baseline is sampled now, in this execution (a task of its own would cost
            # every batch a worker, also when the policy has no baseline check)
            result["baseline"] = _probes.capture_baseline(plan["policy"].get("checks") or [], list(task_vars.get("ansible_play_batch", [])),
                                                          run_state=run_state, task_vars=task_vars, run_context=_probes.run_names(planned),
                                                          correlation_id=run_state.correlation_id or str(uuid.uuid4()))
        # The event callback, the only writer of events.jsonl, records these from the result.
        result["fleetpatch_events"] = run_state.events()
        return result

    @staticmethod
    def _scopes(planned: t.Mapping[str, t.Any], hosts: list[str], task_vars: dict[str, t.Any]) -> dict[str, dict[str, t.Any]]:
        """Each host's calendar scope (region, tenant, environment): the attributes rollout_plan read from the host's
        fleet_* variables and announces per host (fleetpatch_run.hosts), so no host's variables are built again per batch;
        a host the result does not announce (an older plan result) is read from hostvars."""
        announced = (planned.get("fleetpatch_run") or {}).get("hosts") or {}
        names = {f"fleet_{key}": key for key in SCOPE_KEYS}
        scopes = {}
        for host in hosts:
            entry = announced.get(host)
            if isinstance(entry, t.Mapping):
                scopes[host] = {key: entry.get(key) for key in SCOPE_KEYS}
            else:
                scopes[host] = {names[name]: value for name, value in host_vars(task_vars, host, names).items()}
        return scopes

    @staticmethod
    def _slice_stop(run_state: Run, sliced: dict[str, t.Any], *, index: int, wave: str, task_vars: dict[str, t.Any]) -> dict[str, t.Any]:
        """A slice stops before its part of batch index: another slice halted, the budget is spent across the slices, or a
        slice did not finish the batch before within the wait."""
        run_state.event("slice.stopped", batch=index, wave=wave, status="halted", message=sliced["reason"], halt=sliced["halt"],
                        waiting=sliced["waiting"], spent=sliced["spent"])
        return {"changed": False, "batch": index, "wave": wave, "fits": False, "stop": True, "reasons": [sliced["reason"]], "notes": [],
                "blocked_hosts": list(task_vars.get("ansible_play_batch", [])), "next_open": None, "skip_hosts": run_state.skip_hosts,
                "slice": sliced, "msg": f"batch {index} ({wave}) does not start: {sliced['reason']}", "fleetpatch_events": run_state.events()}

    @staticmethod
    def _wait(run_state: Run, found: dict[str, t.Any], *, clock: str, batch: int, wave: str) -> None:
        """No host of the batch may start: the run waits for the window (a re-run resumes it)."""
        if run_state.status == "pending":
            # nothing planned this run (no stored state): it was running until the window stopped it
            run_state.transition("running")
        state = run_state.state
        now_text = iso(utc_now())
        waiting = {"at": now_text, "clock": clock, "batch": batch, "wave": wave, "reasons": found["reasons"],
                   "next_open": found["next_open"], "blocked_hosts": found["blocked_hosts"]}
        run_state.transition("waiting_window")
        state["waiting"] = waiting
        state.setdefault("waits", []).append(waiting)
        state["halted"] = {"at": now_text, "action": "wait_window", "batch": batch, "wave": wave,
                           "reasons": found["reasons"] + ([f"next opening {found['next_open']}"] if found["next_open"] else [])}
        run_state.decide({"at": now_text, "batch": batch, "wave": wave, "action": "wait_window", "reasons": found["reasons"]})
        run_state.save()
        run_state.refresh_lock()
