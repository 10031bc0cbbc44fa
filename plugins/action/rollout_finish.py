# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for fleetpatch.rollout.rollout_finish: record rollbacks, write the summary, release the lock."""

from __future__ import annotations

import collections
import typing as t

from ansible_collections.fleetpatch.rollout.plugins.module_utils._io import write_json_atomic
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._action import ControllerAction
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._controller import controller_identity, host_var, resolve_state_dir
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._redact import redaction_policy, scrub_data
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._run import RUN_OPTIONS, Run, RunStateError
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._slices import SliceError, at_finish, slice_from_plan
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store import (
    RunPaths,
    StoreError,
    failed_hosts,
    iso,
    open_store,
    outcome_entry,
    utc_now,
)

ARGUMENT_SPEC = {
    **RUN_OPTIONS,
    "rollback_hosts": {"type": "list", "elements": "str", "default": []},
    "rollback_result_var": {"type": "str", "default": "__rollout_rollback"},
}


class ActionModule(ControllerAction):
    argument_spec = ARGUMENT_SPEC
    errors = (RunStateError, StoreError, SliceError)

    def _act(self, args: dict[str, t.Any], task_vars: dict[str, t.Any]) -> dict[str, t.Any]:
        # run: the plan's immutable outputs (data); run_state: the run itself, loaded by its id from the store
        run = args["plan"]
        if not isinstance(run.get("plan"), dict) or not isinstance(run.get("patch"), dict):
            raise RunStateError("plan has no plan or patch: pass the registered result of fleetpatch.rollout.rollout_plan")
        state_dir = resolve_state_dir(args["state_dir"] or run.get("state_dir"))
        paths = RunPaths(state_dir, args["run_id"])
        check_mode = bool(self._task.check_mode or run.get("preview"))
        ctx = None if check_mode else slice_from_plan(run)
        # a slice of a sliced job ends with the others: it passes the batches left and waits (bounded) for every slice
        ended = None if ctx is None else at_finish(open_store(state_dir, backend=run.get("state_backend")), ctx, plan=run["plan"],
                                                   identity=controller_identity(task_vars))
        # a run that was never stored (the plan failed, or nothing was planned) finishes as not-started
        run_state = None if check_mode else Run.load(state_dir=state_dir, run_id=args["run_id"], backend=run.get("state_backend"))
        if run_state is None:
            return {"changed": False, "status": "preview" if check_mode else "not-started",
                    # a preview writes nothing: it names no file (issue 15)
                    "paths": {} if check_mode else self._paths(paths), "check_mode": check_mode}
        state = run_state.state
        now = iso(utc_now())
        rollback_failed = self._record_rollbacks(run_state, args, task_vars, now)
        if ctx is not None:
            run_state.lock_id, run_state.sliced = ctx.lock_id, True
            run_state.settle(self._sliced_status(ended, rollback_failed=rollback_failed, rolled_back=bool(args["rollback_hosts"])))
            if ended["halt"]:
                state["halted"] = dict(ended["halt"]["reason"], slice=ended["halt"]["slice"], at=ended["halt"]["at"])
        elif args["rollback_hosts"]:
            run_state.transition("rollback_failed" if rollback_failed else "rolled_back")
        elif run_state.status == "running":
            # The rollout play ended without a gate covering the last batch (killed or aborted).
            run_state.transition("interrupted")
        status = run_state.status
        state["finished"] = now
        # what the summary says comes from hosts' messages and the plan: scrub URL credentials and secret parameters
        summary = scrub_data(self._summary(state, run, status, run_id=run_state.run_id), policy=redaction_policy(run))
        if ended is not None:
            summary["slices"] = {"slice": ctx.number, "count": ctx.count, "halt": ended["halt"], "dead": ended["dead"], "waiting": ended["waiting"],
                                 "hosts": len(run["host_order"]), "waited_seconds": ended["waited_seconds"], "cpu_seconds": ended["cpu_seconds"]}
        run_state.save()
        write_json_atomic(paths.summary, summary)
        for host in args["rollback_hosts"]:
            entry = state["hosts"].get(host, {})
            run_state.event("rollback.host", ts=entry.get("at", now), host=host, wave=entry.get("wave"), batch=entry.get("batch"),
                            status=entry.get("outcome"), message=entry.get("reason"), outcome=entry.get("outcome"), version=entry.get("version"))
        if args["rollback_hosts"]:
            run_state.event("rollback.finished", ts=now, status=status,
                            message=f"{len(args['rollback_hosts']) - len(rollback_failed)} of {len(args['rollback_hosts'])} host(s) rolled back",
                            hosts=list(args["rollback_hosts"]), failed_hosts=rollback_failed)
        run_state.event("run.finished", ts=now, status=status, counts=summary["counts"], failures=summary["failures"],
                        rolled_back=summary["rolled_back"], rollback_failed=summary["rollback_failed"],
                        not_applicable=summary["not_applicable"], trigger=(summary.get("halted") or {}).get("trigger"))
        run_state.release_lock()
        # The event callback, the only writer of events.jsonl, records these from the result.
        return {"changed": False, "status": status, "summary": summary, "paths": self._paths(paths), "failed": False,
                "fleetpatch_events": run_state.events()}

    @staticmethod
    def _sliced_status(ended: dict[str, t.Any], *, rollback_failed: list[str], rolled_back: bool) -> str:
        """The run's status as every slice sees it at the end: a halt by any slice, a slice that died or never finished
        (interrupted), else rolled out; a slice that rolled its own hosts back says so."""
        if rolled_back:
            return "rollback_failed" if rollback_failed else "rolled_back"
        if ended["halt"]:
            # (a rollback response rolls back each slice's own hosts: the slices that had none to roll back are halted)
            return "held" if ended["halt"]["reason"].get("action") == "hold" else "halted"
        if ended["dead"] or ended["waiting"]:
            return "interrupted"
        return "rolled_out"

    @staticmethod
    def _paths(paths: RunPaths) -> dict[str, str]:
        # the run's state is the store's (fleetpatch_state_backend), not a file: these are the operator's files
        return {"run_dir": paths.run_dir, "plan": paths.plan, "events": paths.events, "summary": paths.summary}

    @staticmethod
    def _record_rollbacks(run_state: Run, args: dict[str, t.Any], task_vars: dict[str, t.Any], now: str) -> list[str]:
        failed: list[str] = []
        entries: dict[str, dict[str, t.Any]] = {}
        for host in args["rollback_hosts"]:
            outcome = host_var(task_vars, host, args["rollback_result_var"])
            previous = entries.get(host) or run_state.hosts.get(host, {})
            # cause: the outcome the rollback replaces, so the summary still lists a host that failed and was rolled back
            cause = previous.get("cause") if previous.get("outcome") in ("rolled_back", "rollback_failed") else previous.get("outcome")
            if isinstance(outcome, dict) and not outcome.get("failed") and not outcome.get("unreachable"):
                entries[host] = outcome_entry("rolled_back", at=now, reason=previous.get("reason"), cause=cause,
                                              version=outcome.get("version"), wave=previous.get("wave"), batch=previous.get("batch"))
            else:
                message = outcome.get("msg") if isinstance(outcome, dict) else "no rollback result (unreachable?)"
                entries[host] = outcome_entry("rollback_failed", at=now, reason=str(message)[:500], cause=cause,
                                              wave=previous.get("wave"), batch=previous.get("batch"))
                failed.append(host)
        run_state.record_outcomes(entries)
        return failed

    @staticmethod
    def _summary(state: dict[str, t.Any], run: dict[str, t.Any], status: str, *, run_id: str) -> dict[str, t.Any]:
        plan = run["plan"]
        hosts = state.get("hosts", {})
        counts = collections.Counter(entry.get("outcome") for entry in hosts.values())
        untouched = [host for host in plan["host_order"] if host not in hosts]
        return {
            "schema": 1,
            "run_id": run_id,
            "patch_id": plan["patch_id"],
            "target_version": run["patch"]["target_version"],
            "status": status,
            "fleet_size": plan["fleet_size"],
            "counts": dict(sorted(counts.items())) | {"untouched": len(untouched)},
            "failures": failed_hosts(state),
            "rolled_back": sorted(host for host, entry in hosts.items() if entry.get("outcome") == "rolled_back"),
            "rollback_failed": sorted(host for host, entry in hosts.items() if entry.get("outcome") == "rollback_failed"),
            "not_applicable": {host: hosts[host].get("version") for host in sorted(hosts) if hosts[host].get("outcome") == "not_applicable"},
            "error_budget": plan["error_budget"],
            "halted": state.get("halted"),
            "waiting": state.get("waiting") if status == "waiting_window" else None,
            "attempts": len(state.get("attempts", [])),
            "hosts": {host: hosts[host] for host in sorted(hosts)},
            "untouched": untouched,
        }
