# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for fleetpatch.rollout.wave_gate: the controller's decision after every batch."""

from __future__ import annotations

import time
import typing as t

from ansible.plugins.action import ActionBase

from ansible_collections.fleetpatch.rollout.plugins.module_utils._gate import (
    GateDecision,
    classify_host,
    decide,
)
from ansible_collections.fleetpatch.rollout.plugins.module_utils._plan import host_batch_index
from ansible_collections.fleetpatch.rollout.plugins.module_utils._runstate import (
    RunPaths,
    append_event,
    empty_state,
    failures,
    iso,
    load_state,
    record_outcome,
    refresh_lock,
    save_state,
    utc_now,
)
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._controller import host_var, probe_many

ARGUMENT_SPEC = {
    "run": {"type": "dict", "required": True},
    "result_var": {"type": "str", "default": "__rollout_apply"},
    "health_timeout": {"type": "float", "default": 5.0},
    "bake_seconds": {"type": "float"},
}
STOPPING_ACTIONS = ("hold", "halt", "rollback_wave", "rollback_all")


class GateError(Exception):
    """The gate cannot evaluate the batch."""


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp: t.Any = None, task_vars: dict[str, t.Any] | None = None) -> dict[str, t.Any]:
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        _validation, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        try:
            result.update(self._gate(args, task_vars))
        except GateError as exc:
            result.update(failed=True, msg=str(exc))
        return result

    def _batch_index(self, plan: dict[str, t.Any], task_vars: dict[str, t.Any]) -> int:
        index_of = host_batch_index(plan)
        indexes = {index_of[host] for host in task_vars.get("ansible_play_batch", []) if host in index_of}
        if len(indexes) != 1:
            raise GateError(f"cannot tell which plan batch is running: play batch maps to batches {sorted(indexes)}")
        return indexes.pop()

    def _verdicts(self, hosts: list[str], run: dict[str, t.Any], result_var: str, task_vars: dict[str, t.Any], timeout: float,
                  *, probe: bool = True):
        target = run["patch"]["target_version"]
        skip = set(run.get("skip_hosts", []))
        results = {host: host_var(task_vars, host, result_var) for host in hosts}
        to_probe = {}
        for host in hosts:
            outcome = results[host]
            url = host_var(task_vars, host, "fleetpatch_health_url")
            if probe and url and host not in skip and isinstance(outcome, dict) and not outcome.get("failed") and not outcome.get("unreachable"):
                to_probe[host] = url
        health = probe_many(to_probe, timeout=timeout)
        verdicts = [
            classify_host(host, results[host] if isinstance(results[host], dict) else None, health.get(host), target_version=target, skipped=host in skip)
            for host in hosts
        ]
        return verdicts, health

    def _gate(self, args: dict[str, t.Any], task_vars: dict[str, t.Any]) -> dict[str, t.Any]:
        run = args["run"]
        plan = run["plan"]
        check_mode = bool(self._task.check_mode or run.get("preview"))
        index = self._batch_index(plan, task_vars)
        batch = plan["batches"][index]
        wave = plan["waves"][batch["wave"]]
        paths = RunPaths(run["state_dir"], run["run_id"])
        state = load_state(paths) or empty_state(run["run_id"], plan["patch_id"], plan["fingerprint"])
        now = iso(utc_now())

        # In check mode no host changed, so probing would only report the old version.
        verdicts, health = self._verdicts(batch["hosts"], run, args["result_var"], task_vars, args["health_timeout"], probe=not check_mode)
        decision = self._decide(state, verdicts, plan, wave, now, batch_index=index)

        baked = 0.0
        bake = wave.get("bake_seconds", 0) if args["bake_seconds"] is None else args["bake_seconds"]
        if batch["last_in_wave"] and decision.action == "continue" and bake and not check_mode:
            started = time.monotonic()
            time.sleep(float(bake))
            baked = round(time.monotonic() - started, 3)
            # Health after the bake decides again: a host that degrades while baking stops the next wave.
            wave_hosts = [host for host in wave["hosts"] if state["hosts"].get(host, {}).get("outcome") == "patched"]
            verdicts, health = self._verdicts(wave_hosts, run, args["result_var"], task_vars, args["health_timeout"])
            decision = self._decide(state, verdicts, plan, wave, iso(utc_now()), batch_index=index)

        rollback_hosts = self._rollback_hosts(decision, state, plan, wave, index)
        stop = decision.action in STOPPING_ACTIONS
        last_batch = index == len(plan["batches"]) - 1
        if not check_mode:
            state.setdefault("decisions", []).append(
                {"at": now, "batch": index, "wave": wave["name"], "action": decision.action, "reasons": list(decision.reasons)}
            )
            if index not in state.setdefault("completed_batches", []):
                state["completed_batches"].append(index)
            if stop:
                state["halted"] = {"at": now, "action": decision.action, "batch": index, "wave": wave["name"], "reasons": list(decision.reasons)}
                state["status"] = {"hold": "held", "halt": "halted"}.get(decision.action, "rolling_back")
            elif last_batch:
                state["status"] = "rolled_out"
            save_state(paths, state)
            for verdict in verdicts:
                append_event(
                    paths,
                    {
                        "ts": now,
                        "event": "host.outcome",
                        "run_id": run["run_id"],
                        "correlation_id": run.get("correlation_id"),
                        "host": verdict.host,
                        "batch": index,
                        "wave": wave["name"],
                        "outcome": state["hosts"].get(verdict.host, {}).get("outcome", verdict.outcome),
                        "reason": verdict.reason,
                        "changed": verdict.changed,
                        "health": health.get(verdict.host),
                    },
                )
            append_event(
                paths,
                {
                    "ts": iso(utc_now()),
                    "event": "gate.decision",
                    "run_id": run["run_id"],
                    "correlation_id": run.get("correlation_id"),
                    "batch": index,
                    "wave": wave["name"],
                    "last_in_wave": batch["last_in_wave"],
                    "baked_seconds": baked,
                    "rollback_hosts": rollback_hosts,
                    **decision.as_dict(),
                },
            )
            refresh_lock(paths)
        return {
            "changed": False,
            "batch": index,
            "wave": wave["name"],
            "decision": decision.as_dict(),
            "action": decision.action,
            "stop": stop,
            "rollback_hosts": rollback_hosts,
            "health": health,
            "baked_seconds": baked,
            "check_mode": check_mode,
            "msg": f"batch {index} ({wave['name']}): {decision.action}: " + "; ".join(decision.reasons),
        }

    @staticmethod
    def _decide(state: dict[str, t.Any], verdicts, plan: dict[str, t.Any], wave: dict[str, t.Any], now: str, *, batch_index: int) -> GateDecision:
        for verdict in verdicts:
            if verdict.outcome != "skipped":
                record_outcome(state, verdict.host, verdict.outcome, at=now, reason=verdict.reason or None, batch=batch_index, wave=wave["name"])
        budget = plan["error_budget"]
        decision = decide(
            verdicts=verdicts,
            failures_total=len(failures(state)),
            budget_limit=budget["limit"],
            halt_when=budget["halt_when"],
            response=wave["response"],
            wave_name=wave["name"],
        )
        if decision.action == "quarantine":
            for host in decision.failed_hosts:
                record_outcome(state, host, "quarantined", at=now, reason=state["hosts"][host].get("reason"), batch=batch_index, wave=wave["name"])
        return decision

    @staticmethod
    def _rollback_hosts(decision: GateDecision, state: dict[str, t.Any], plan: dict[str, t.Any], wave: dict[str, t.Any], index: int) -> list[str]:
        touched = ("patched", "unhealthy", "failed")
        if decision.action == "rollback_wave":
            done = [b for b in wave["batches"] if b <= index]
            hosts = [host for b in done for host in plan["batches"][b]["hosts"]]
        elif decision.action == "rollback_all":
            hosts = [host for batch in plan["batches"][: index + 1] for host in batch["hosts"]]
        else:
            return []
        return [host for host in hosts if state["hosts"].get(host, {}).get("outcome") in touched]
