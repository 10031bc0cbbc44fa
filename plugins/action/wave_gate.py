# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for fleetpatch.rollout.wave_gate: the controller's decision after every batch."""

from __future__ import annotations

import dataclasses
import itertools
import time
import typing as t

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._analysis import compact, pick_control_hosts
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._checks import HOST_KINDS, sample
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._gate import (
    GateDecision,
    HostVerdict,
    classify_host,
    decide,
)
from ansible_collections.fleetpatch.rollout.plugins.module_utils._errors import FleetpatchError
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils import _probes
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._action import ControllerAction
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._controller import batch_result, controller_identity, host_var, host_vars, probe_many
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._run import (
    RUN_VAR_OPTIONS,
    Run,
    RunStateError,
    plan_for_action,
    play_batch_index,
    run_for_action,
)
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._slices import SliceError, after_batch, slice_from_plan
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store import StoreError, iso, outcome_entry, utc_now

ARGUMENT_SPEC = {
    **RUN_VAR_OPTIONS,
    # check mode stores no run, so the readiness gate's skip list reaches the dry run through its registered result
    "readiness_var": {"type": "str", "default": "__rollout_readiness"},
    "result_var": {"type": "str", "default": "__rollout_apply"},
    "health_timeout": {"type": "float", "default": 5.0},
    "bake_seconds": {"type": "float"},
    # samples of command checks run as a task of their own; patch_apply's (result_var's command_checks) come first
    "command_result_var": {"type": "str", "default": "__rollout_command_checks"},
    "check_workers": {"type": "int", "default": _probes.DEFAULT_WORKERS},
}
STOPPING_ACTIONS = ("hold", "halt", "rollback_wave", "rollback_all")


class GateError(FleetpatchError):
    """The gate cannot evaluate the batch."""


def control_hosts(plan: t.Mapping[str, t.Any], run_state: Run, *, exclude: t.Collection[str], count: int, start: int) -> list[str]:
    """Up to count hosts this run has not touched (no outcome, not skipped, not in exclude), in plan order from batch start
    on: every host before it was handed to an earlier batch. Candidates are read from the store a few at a time, so the
    gate reads O(batch) hosts, not every host of the fleet."""
    if count <= 0:
        return []
    skip = set(run_state.skip_hosts) | set(exclude)
    candidates = (host for batch in plan["batches"][start:] for host in batch["hosts"] if host not in skip)
    picked: list[str] = []
    while len(picked) < count:
        part = list(itertools.islice(candidates, max(4 * count, 32)))
        if not part:
            break
        picked.extend(pick_control_hosts(part, exclude=run_state.outcomes_of(part), count=count - len(picked)))
    return picked


class ActionModule(ControllerAction):
    argument_spec = ARGUMENT_SPEC
    errors = (GateError, RunStateError, StoreError, SliceError)
    # the index of the batch this execution gates (control hosts are picked from it on)
    _gated = 0

    def _batch_index(self, run: dict[str, t.Any], task_vars: dict[str, t.Any]) -> int:
        indexes = play_batch_index(run, task_vars.get("ansible_play_batch", []))
        if len(indexes) != 1:
            raise GateError(f"cannot tell which plan batch is running: play batch maps to batches {sorted(indexes)}")
        return indexes.pop()

    def _verdicts(self, hosts: list[str], run: dict[str, t.Any], run_state: Run, result_var: str, task_vars: dict[str, t.Any],
                  timeout: float, *, probe: bool = True):
        target = run["patch"]["target_version"]
        skip = set(run_state.skip_hosts)
        # one hostvars lookup per host (each builds every variable of the host)
        found = {host: host_vars(task_vars, host, (result_var, "fleetpatch_health_url")) for host in hosts}
        results = {host: found[host][result_var] for host in hosts}
        to_probe = {}
        for host in hosts:
            outcome = results[host]
            url = found[host]["fleetpatch_health_url"]
            if (probe and url and host not in skip and isinstance(outcome, dict) and not outcome.get("failed") and not outcome.get("unreachable")
                    and not outcome.get("not_applicable")):
                to_probe[host] = url
        health = probe_many(to_probe, timeout=timeout)
        verdicts = [
            classify_host(host, results[host] if isinstance(results[host], dict) else None, health.get(host), target_version=target, skipped=host in skip,
                          missing_copy_fails=run_state.attempt.get("unstaged") == "fail")
            for host in hosts
        ]
        return verdicts, health

    def _act(self, args: dict[str, t.Any], task_vars: dict[str, t.Any]) -> dict[str, t.Any]:
        # run: the plan's immutable outputs (data); run_state: the run itself, loaded by its id from the store
        run = plan_for_action(args, task_vars) or {}
        if not isinstance(run.get("plan"), t.Mapping) or not isinstance(run.get("patch"), t.Mapping):
            raise GateError(f"plan has no plan or patch: pass the registered result of fleetpatch.rollout.rollout_plan as plan, or name"
                            f" the variable of localhost that holds it (plan_var, now {args['plan_var']!r})")
        plan = run["plan"]
        check_mode = bool(self._task.check_mode or run.get("preview"))
        index = self._gated = self._batch_index(run, task_vars)
        batch = plan["batches"][index]
        wave = plan["waves"][batch["wave"]]
        # the batch's outcomes only: other hosts' are read when a step needs them (bake, rollback, control hosts)
        run_state = run_for_action(run_id=args["run_id"], plan=run, state_dir=args["state_dir"], check_mode=check_mode, hosts=batch["hosts"])
        if run_state.dry_run:
            run_state.skip((batch_result(task_vars, args["readiness_var"]) or {}).get("skip_hosts") or [])
        state = run_state.state
        now = iso(utc_now())
        # a slice of a sliced job gates its own hosts of the batch (run["host_order"] is the slice's; the whole plan's otherwise)
        ctx, arrived = slice_from_plan(run), None
        own = self._own(run, ctx)
        gated = [host for host in batch["hosts"] if own is None or host in own]

        # In check mode no host changed, so probing would only report the old version.
        verdicts, health = self._verdicts(gated, run, run_state, args["result_var"], task_vars, args["health_timeout"], probe=not check_mode)
        verdicts, checks = self._run_checks(verdicts, run, run_state, wave["name"], args, task_vars, probe=not check_mode)
        decision = self._decide(run_state, verdicts, plan, wave, now, batch_index=index, checks=checks)

        baked = 0.0
        bake = wave.get("bake_seconds", 0) if args["bake_seconds"] is None else args["bake_seconds"]
        if batch["last_in_wave"] and decision.action == "continue" and bake and not check_mode:
            started = time.monotonic()
            time.sleep(float(bake))
            baked = round(time.monotonic() - started, 3)
            # Health after the bake decides again: a host that degrades while baking stops the next wave.
            mine = [host for host in wave["hosts"] if own is None or host in own]
            known = run_state.outcomes_of(mine)
            wave_hosts = [host for host in mine if known.get(host, {}).get("outcome") == "patched"]
            verdicts, health = self._verdicts(wave_hosts, run, run_state, args["result_var"], task_vars, args["health_timeout"])
            verdicts, checks = self._run_checks(verdicts, run, run_state, wave["name"], args, task_vars)
            decision = self._decide(run_state, verdicts, plan, wave, iso(utc_now()), batch_index=index, checks=checks)

        rollback_hosts = [host for host in self._rollback_hosts(decision, run_state, plan, wave, index) if own is None or host in own]
        stop = decision.action in STOPPING_ACTIONS
        last_batch = index == len(plan["batches"]) - 1
        if not check_mode:
            run_state.decide({"at": now, "batch": index, "wave": wave["name"], "action": decision.action, "reasons": list(decision.reasons)})
            if index not in state.setdefault("completed_batches", []):
                state["completed_batches"].append(index)
            if stop:
                run_state.stop(decision.action, {"at": now, "action": decision.action, "batch": index, "wave": wave["name"],
                                                 "trigger": decision.trigger, "reasons": list(decision.reasons)})
            elif last_batch and ctx is None:
                # (a sliced run's status is settled by its slices together at the finish)
                run_state.transition("rolled_out")
            run_state.save()
            for verdict in verdicts:
                run_state.event("host.outcome", ts=now, host=verdict.host, batch=index, wave=wave["name"],
                                outcome=state["hosts"].get(verdict.host, {}).get("outcome", verdict.outcome),
                                reason=verdict.reason, changed=verdict.changed, health=health.get(verdict.host))
            run_state.event("gate.decision", batch=index, wave=wave["name"], last_in_wave=batch["last_in_wave"], baked_seconds=baked,
                            rollback_hosts=rollback_hosts, **decision.as_dict(), **({"checks": checks} if checks else {}))
            self._queue_outcome_events(run_state, plan, wave, index, batch["last_in_wave"], decision, rollback_hosts)
            run_state.refresh_lock()
            if ctx is not None:  # this slice's part is gated: the next batch starts once every slice arrived
                arrived = after_batch(run_state.store, ctx, index=index, identity=controller_identity(task_vars), stop=self._halt(decision, stop))
        result = {
            "changed": False,
            "batch": index,
            "wave": wave["name"],
            "decision": decision.as_dict(),
            "action": decision.action,
            "stop": stop,
            "rollback_hosts": rollback_hosts,
            "health": health,
            "baked_seconds": baked, "check_mode": check_mode, "checks": checks,
            "msg": f"batch {index} ({wave['name']}): {decision.action}: " + (f"{decision.trigger}; " if decision.trigger else "") + "; ".join(decision.reasons),
            **({"slice": arrived} if arrived is not None else {}),
        }
        stabilization = plan["policy"].get("stabilization") or {}
        if last_batch and not stop and not check_mode and stabilization.get("seconds"):
            result.update(self._stabilize(run, plan, run_state, index, wave, args, task_vars))
        # The event callback, the only writer of events.jsonl, records these from the result.
        result["fleetpatch_events"] = run_state.events()
        return result

    @staticmethod
    def _own(run: t.Mapping[str, t.Any], ctx: t.Any) -> set[str] | None:
        """The hosts this gate decides for: a slice's own hosts (its host_order), or None: every planned host (no set of
        the whole fleet is built per batch)."""
        return set(run["host_order"]) if ctx is not None else None

    @staticmethod
    def _halt(decision: GateDecision, stop: bool) -> dict[str, t.Any] | None:
        """What every other slice is told when this slice's gate stops the run."""
        return {"trigger": decision.trigger or decision.action, "action": decision.action} if stop else None

    @staticmethod
    def _queue_outcome_events(run_state: Run, plan: dict[str, t.Any], wave: dict[str, t.Any], index: int, last_in_wave: bool,
                              decision: GateDecision, rollback_hosts: list[str]) -> None:
        """The budget decision, a rollback the gate chose, and the end of the wave (last batch, or stopped early)."""
        budget = plan["error_budget"]
        remaining = budget["limit"] - decision.failures_total
        run_state.event("budget.decision", batch=index, wave=wave["name"], status="spent" if decision.budget_spent else "within",
                        message=f"{decision.failures_total} failure(s) of {budget['limit']} allowed ({budget['halt_when']})",
                        failures_total=decision.failures_total, budget_limit=budget["limit"], halt_when=budget["halt_when"],
                        budget_spent=decision.budget_spent, remaining=remaining, action=decision.action)
        if rollback_hosts:
            run_state.event("rollback.decided", batch=index, wave=wave["name"], status=decision.action,
                            message=f"{decision.action}: {len(rollback_hosts)} host(s) to roll back",
                            hosts=rollback_hosts, reasons=list(decision.reasons))
        if last_in_wave or decision.action in STOPPING_ACTIONS:
            run_state.event("wave.finished", batch=index, wave=wave["name"], status=decision.action,
                            message=f"wave {wave['name']} ended after batch {index}: {decision.action}",
                            completed=last_in_wave, hosts=len(wave["hosts"]), action=decision.action)

    def _run_checks(self, verdicts, run: dict[str, t.Any], run_state: Run, wave_name: str, args: dict[str, t.Any],
                    task_vars: dict[str, t.Any], *, probe: bool = True, host_side: bool = True):
        """The policy's checks on the hosts that passed so far; a host whose check fails becomes unhealthy.

        host_side: also judge the command checks the hosts ran (see _command_samples).
        """
        plan = run["plan"]
        checks = [check for check in plan["policy"].get("checks") or [] if host_side or check["kind"] not in HOST_KINDS]
        if not checks or not probe:
            return verdicts, None
        hosts = [verdict.host for verdict in verdicts if verdict.outcome == "patched"]
        wanted = max([(check.get("baseline") or {}).get("control_hosts", 0) for check in checks] or [0])
        names = [check["name"] for check in checks if check["kind"] in HOST_KINDS]
        host_samples = {}
        for host in hosts if names else ():
            found = self._command_samples(host, names, args, task_vars)
            if found is not None:
                host_samples[host] = found
        results, outcome = _probes.evaluate(
            checks,
            hosts,
            task_vars=task_vars,
            run_context=_probes.run_names(run),
            # the attempt's correlation id (X-Correlation-ID of every request), as its events and registry rows carry it
            correlation_id=run_state.correlation_id or run_state.run_id,
            wave=wave_name,
            baselines=_probes.load_baselines(run_state.paths.run_dir),
            control_hosts=control_hosts(plan, run_state, exclude={verdict.host for verdict in verdicts}, count=wanted, start=self._gated),
            host_samples=host_samples,
            workers=args["check_workers"],
        )
        failing = outcome.host_failures
        verdicts = [
            HostVerdict(verdict.host, "unhealthy", failing[verdict.host], verdict.changed, verdict.version) if verdict.host in failing else verdict
            for verdict in verdicts
        ]
        return verdicts, dict(outcome.as_dict(), results=[compact(result) for result in results])

    @staticmethod
    def _command_samples(host: str, names: list[str], args: dict[str, t.Any], task_vars: dict[str, t.Any]) -> dict[str, t.Any] | None:
        """The samples of the command checks (names) host ran, or None (no samples: the gate finds them inconclusive).

        patch_apply took them in its own execution (result_var's command_checks); a playbook that still runs
        fleetpatch.rollout.command_checks as a task of its own registers them as command_result_var.
        """
        applied = host_var(task_vars, host, args["result_var"])
        found = applied.get("command_checks") if isinstance(applied, dict) else None
        if not isinstance(found, dict):
            found = host_var(task_vars, host, args["command_result_var"])
        if isinstance(found, dict) and isinstance(found.get("samples"), dict):
            return found["samples"]
        for result in (found, applied):
            if isinstance(result, dict) and (result.get("failed") or result.get("unreachable")):
                why = str(result.get("msg") or "command checks did not run").strip()[:300]
                return {name: [sample("unavailable", None, why)] for name in names}
        return None

    def _stabilize(self, run: dict[str, t.Any], plan: dict[str, t.Any], run_state: Run, index: int,
                   wave: dict[str, t.Any], args: dict[str, t.Any], task_vars: dict[str, t.Any]) -> dict[str, t.Any]:
        """After the last wave, keep checking every patched host; a breach applies the stabilization response."""
        spec = plan["policy"]["stabilization"]
        state = run_state.state
        # run["host_order"]: a slice keeps checking its own hosts
        known = run_state.outcomes_of(run["host_order"])
        hosts = [host for host in run["host_order"] if known.get(host, {}).get("outcome") == "patched"]
        window = {"name": "stabilization", "response": spec["response"]}
        run_state.event("stabilization.started", batch=index, wave=window["name"], status="started",
                        message=f"checks keep running on {len(hosts)} host(s) for {spec['seconds']:g} s",
                        seconds=spec["seconds"], interval=spec["interval"], hosts=hosts,
                        checks=[check["name"] for check in plan["policy"]["checks"]])
        # the window is visible in the run (its store) while it runs (events reach the log when the gate returns)
        state["stabilization"] = {"started": iso(utc_now()), "seconds": spec["seconds"], "interval": spec["interval"], "hosts": hosts}
        run_state.save()
        started = time.monotonic()
        rounds = 0
        while True:
            rounds += 1
            verdicts, health = self._verdicts(hosts, run, run_state, args["result_var"], task_vars, args["health_timeout"])
            # command checks ran once per host with its batch; the window re-runs the controller's checks only
            verdicts, checks = self._run_checks(verdicts, run, run_state, window["name"], args, task_vars, host_side=False)
            breached = [verdict for verdict in verdicts if verdict.outcome != "patched"]
            remaining = float(spec["seconds"]) - (time.monotonic() - started)
            if breached or (checks and checks["status"] != "pass") or remaining <= 0:
                break
            time.sleep(min(float(spec["interval"]), remaining))
        elapsed = round(time.monotonic() - started, 3)
        now = iso(utc_now())
        # only hosts that breached get a new outcome: the others keep the wave and batch that patched them
        decision = self._decide(run_state, breached, plan, window, now, batch_index=index, checks=checks)
        window_text = f"stabilization: {rounds} round(s) of checks over {elapsed:g} s of {spec['seconds']:g} s on {len(hosts)} host(s)"
        decision = dataclasses.replace(decision, reasons=(window_text,) + decision.reasons)
        rollback_hosts = self._rollback_hosts(decision, run_state, plan, wave, index)
        stop = decision.action in STOPPING_ACTIONS
        run_state.decide({"at": now, "batch": index, "wave": window["name"], "action": decision.action, "reasons": list(decision.reasons)})
        if stop:
            run_state.stop(decision.action, {"at": now, "action": decision.action, "batch": index, "wave": window["name"],
                                             "trigger": decision.trigger, "reasons": list(decision.reasons)})
        details = {"seconds": spec["seconds"], "elapsed": elapsed, "rounds": rounds, "checked_hosts": len(hosts)}
        state["stabilization"].update(details, finished=now, action=decision.action)
        run_state.save()
        run_state.event("gate.decision", batch=index, wave=window["name"], last_in_wave=True, baked_seconds=0, stabilization=details,
                        rollback_hosts=rollback_hosts, **decision.as_dict(), **({"checks": checks} if checks else {}))
        if rollback_hosts:
            run_state.event("rollback.decided", batch=index, wave=window["name"], status=decision.action,
                            message=f"{decision.action}: {len(rollback_hosts)} host(s) to roll back",
                            hosts=rollback_hosts, reasons=list(decision.reasons))
        run_state.refresh_lock()
        return {
            "decision": decision.as_dict(),
            "action": decision.action,
            "stop": stop,
            "rollback_hosts": rollback_hosts,
            "health": health,
            "checks": checks,
            "stabilization": details,
            "msg": f"stabilization after batch {index}: {decision.action}: " + "; ".join(decision.reasons),
        }

    @staticmethod
    def _decide(run_state: Run, verdicts, plan: dict[str, t.Any], wave: dict[str, t.Any], now: str, *, batch_index: int,
                checks: dict[str, t.Any] | None = None) -> GateDecision:
        # the batch's outcomes and the budget they spend: one atomic operation of the run's store
        spent = run_state.record_outcomes({
            verdict.host: outcome_entry(verdict.outcome, at=now, reason=verdict.reason or None, batch=batch_index, wave=wave["name"],
                                        version=verdict.version if verdict.outcome == "not_applicable" else None)
            for verdict in verdicts if verdict.outcome != "skipped"
        })
        budget = plan["error_budget"]
        decision = decide(
            verdicts=verdicts,
            failures_total=spent,
            budget_limit=budget["limit"],
            halt_when=budget["halt_when"],
            response=wave["response"],
            wave_name=wave["name"],
            fleet_failures=(checks or {}).get("fleet_failures", ()),
            inconclusive=(checks or {}).get("inconclusive", ()),
            inconclusive_response=plan["policy"].get("inconclusive_response", "hold"),
        )
        if decision.action == "quarantine":
            hosts = run_state.hosts
            run_state.record_outcomes({host: outcome_entry("quarantined", at=now, reason=hosts[host].get("reason"), batch=batch_index, wave=wave["name"])
                                       for host in decision.failed_hosts})
        return decision

    @staticmethod
    def _rollback_hosts(decision: GateDecision, run_state: Run, plan: dict[str, t.Any], wave: dict[str, t.Any], index: int) -> list[str]:
        touched = ("patched", "unhealthy", "failed")
        if decision.action == "rollback_wave":
            done = [b for b in wave["batches"] if b <= index]
            hosts = [host for b in done for host in plan["batches"][b]["hosts"]]
        elif decision.action == "rollback_all":
            hosts = [host for batch in plan["batches"][: index + 1] for host in batch["hosts"]]
        else:
            return []
        # the outcomes of those hosts only, read once for a rollback decision
        known = run_state.outcomes_of(hosts)
        return [host for host in hosts if known.get(host, {}).get("outcome") in touched]
