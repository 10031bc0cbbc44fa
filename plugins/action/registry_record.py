# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for fleetpatch.rollout.registry_record: write a patch's and a run's records into the patch registry."""

from __future__ import annotations

import os
import typing as t

from ansible_collections.fleetpatch.rollout.plugins.module_utils._io import sha256_file
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._action import ControllerAction
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._controller import resolve_state_dir
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._events import (
    correlation_for_attempt,
    domain_event,
    events_callback_active,
    file_head,
)
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._redact import DEFAULT_SECRET_PATTERNS, Redactor
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._registry import (
    ApprovalError,
    Ledger,
    RegistryError,
    open_registry,
    patch_body,
    registry_paths,
    relative_to,
    write_checkpoint,
)
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._run import RUN_OPTIONS, Run, RunStateError, run_for_action

ARGUMENT_SPEC = {
    "event": {"type": "str", "required": True, "choices": ["plan", "prestaged", "finish", "override_refused"]},
    # plan and finish: the run (its id, the plan's immutable outputs); prestaged and override_refused have no stored run
    **{name: dict(spec, required=False) for name, spec in RUN_OPTIONS.items()},
    "finish": {"type": "dict"},
    "patch_id": {"type": "str"},
    "details": {"type": "dict", "default": {}},
    "registry_path": {"type": "str"},
    "checkpoint_dir": {"type": "str"},
    "signing_key": {"type": "path"},
    "require_approval": {"type": "bool", "default": False},
    "secret_vars": {"type": "list", "elements": "str"},
}


# Variables never scanned for secrets: Ansible's own views of the inventory (large, and templated on access).
_NOT_SCANNED = frozenset({"hostvars", "vars", "groups", "group_names", "omit", "play_hosts", "ansible_play_hosts",
                          "ansible_play_hosts_all", "ansible_play_batch", "inventory_hostname", "playbook_dir"})


class ActionModule(ControllerAction):
    argument_spec = ARGUMENT_SPEC
    argument_constraints = {"required_together": [["run_id", "plan"]], "required_if": [["event", "plan", ["run_id"]], ["event", "finish", ["run_id"]]]}
    errors = (RegistryError, RunStateError, OSError)
    error_prefix = "patch registry: "

    def _failure(self, exc: Exception) -> dict[str, t.Any]:
        # a RegistryError that names the registry file already says "patch registry <path> ..."
        text = str(exc)
        return {"failed": True, "msg": text if text.startswith("patch registry") else f"{self.error_prefix}{text}"}

    def _act(self, args: dict[str, t.Any], task_vars: dict[str, t.Any]) -> dict[str, t.Any]:
        run = args["plan"] or {}
        if self._task.check_mode or run.get("preview"):
            return {"changed": False, "skipped_reason": "check mode or preview: the registry is not written", "recorded": []}
        return self._record(args, run, task_vars)

    @staticmethod
    def _redactor(args: dict[str, t.Any], task_vars: dict[str, t.Any]) -> Redactor:
        names = args["secret_vars"]
        if names is None:
            names = [name.strip() for name in os.environ.get("FLEETPATCH_SECRET_VARS", "").split(",") if name.strip()]
        redactor = Redactor(names=names, patterns=DEFAULT_SECRET_PATTERNS)
        for key, value in task_vars.items():
            if key in _NOT_SCANNED:
                continue
            if redactor.is_secret_name(key):
                redactor.add(value, name=key)
            elif isinstance(value, (dict, list)):
                redactor.collect(value)
        return redactor

    def _record(self, args: dict[str, t.Any], run: dict[str, t.Any], task_vars: dict[str, t.Any]) -> dict[str, t.Any]:
        state_dir = resolve_state_dir(args["state_dir"] or run.get("state_dir"))
        # the run, loaded by its id: its attempt's correlation id is every row's (the events of the attempt carry it too)
        run_state = run_for_action(run_id=args["run_id"], plan=run, state_dir=state_dir, check_mode=False) if args["run_id"] else None
        paths = registry_paths(state_dir, registry_path=args["registry_path"], checkpoint_dir=args["checkpoint_dir"])
        # the registry lives where the run's state does: the PostgreSQL store when the plan chose it, else the SQLite file
        backend = run.get("state_backend")
        registry = open_registry(state_dir, backend=backend, path=paths["registry"])
        redactor = self._redactor(args, task_vars)
        patch_id = args["patch_id"] or (run.get("patch") or {}).get("patch_id")
        if not patch_id:
            raise RegistryError("patch_id is required (directly or through plan)")
        run_id = run_state.run_id if run_state else None
        # no stored run (pre-staging, a refused override): the id the refusal carries, else the explicit one or a new one
        correlation_id = (run_state.correlation_id if run_state else None) or args["details"].get("correlation_id") or correlation_for_attempt(task_vars)[0]
        recorded: list[dict[str, t.Any]] = []
        common = {"patch_id": patch_id, "run_id": run_id, "correlation_id": correlation_id, "redactor": redactor}
        out: dict[str, t.Any] = {"changed": True, "registry": registry.path}
        if args["event"] == "plan":
            recorded += self._plan(registry, args, run, t.cast(Run, run_state), state_dir, common)
            out["fleetpatch_registry"] = {"path": paths["registry"], "backend": backend, "checkpoint_dir": paths["checkpoints"],
                                          "signing_key": args["signing_key"], "run_id": run_id, "patch_id": patch_id, "state_dir": state_dir}
        elif args["event"] == "prestaged":
            recorded.append(registry.append("patch.prestaged", dict(args["details"]), **common))
        elif args["event"] == "override_refused":
            # a refused emergency override is part of the patch's record too (the run stops before any host)
            recorded.append(registry.append("patch.override", dict(args["details"], status="refused"), **common))
        else:
            recorded.append(self._finish(registry, args, run, t.cast(Run, run_state), state_dir, common))
            checkpoint = write_checkpoint(registry, paths["checkpoints"], run_id=run_id, signing_key=args["signing_key"])
            out["checkpoint"] = checkpoint
            if checkpoint.get("sign_error"):
                out["warnings"] = [f"patch registry checkpoint {checkpoint['path']} is not signed: {checkpoint['sign_error']}"]
        out["recorded"] = [{"seq": record["seq"], "kind": record["kind"], "hash": record["hash"]} for record in recorded]
        out["fleetpatch_events"] = [domain_event("registry.recorded", status=record["kind"], message=f"registry record #{record['seq']} {record['kind']}",
                                                 seq=record["seq"], kind=record["kind"], hash=record["hash"]) for record in recorded]
        return out

    @staticmethod
    def _plan(registry: Ledger, args: dict[str, t.Any], run: dict[str, t.Any], run_state: Run, state_dir: str,
              common: dict[str, t.Any]) -> list[dict[str, t.Any]]:
        manifest = run.get("patch")
        if not isinstance(manifest, dict):
            raise RegistryError("run has no patch manifest: pass the registered result of fleetpatch.rollout.rollout_plan")
        try:
            body = patch_body(manifest, manifest_path=run.get("manifest_path"), require_approval=args["require_approval"])
        except ApprovalError as exc:
            raise RegistryError(str(exc)) from exc
        recorded = []
        latest = registry.latest("patch.registered", patch_id=common["patch_id"])
        if latest is None or latest["body"].get("manifest_sha256") != body["manifest_sha256"]:
            if latest is not None:
                body["amends"] = latest["seq"]
            recorded.append(registry.append("patch.registered", body, **common))
        override = (run.get("change") or {}).get("override")
        if override:
            change = run["change"]
            recorded.append(registry.append("patch.override", {"status": "accepted", "override": override, "profile": change.get("profile"),
                                                               "clock": change.get("clock"), "clock_source": change.get("clock_source")},
                                            **common))
        attempts = run_state.state.get("attempts") or [{}]
        attempt = run_state.attempt
        plan = run.get("plan") or {}
        callback = events_callback_active()
        recorded.append(registry.append("run.started", {
            "attempt": len(attempts),
            "resumed": bool(attempt.get("resumed")),
            "owner": attempt.get("owner"),
            "awx_job_id": attempt.get("awx_job_id"),
            "plan_fingerprint": plan.get("fingerprint"),
            "fleet_size": plan.get("fleet_size"),
            "waves": [wave.get("name") for wave in plan.get("waves", [])],
            "batches": len(plan.get("batches", [])),
            "error_budget": plan.get("error_budget"),
            "skip_hosts": run_state.skip_hosts,
            "change": {key: (run.get("change") or {}).get(key) for key in ("change_type", "classification", "severity", "profile",
                                                                           "time_to_patch_seconds", "clock")},
            "schedule": [{key: entry.get(key) for key in ("wave", "fits", "reasons", "next_open")} for entry in run.get("schedule") or []],
            "events": {"path": relative_to(run_state.paths.events, state_dir), "callback": callback},
        }, **common))
        return recorded

    @staticmethod
    def _finish(registry: Ledger, args: dict[str, t.Any], run: dict[str, t.Any], run_state: Run, state_dir: str,
                common: dict[str, t.Any]) -> dict[str, t.Any]:
        finish = args["finish"] or {}
        state = run_state.state
        summary = finish.get("summary") or {}
        attempts = state.get("attempts") or [{}]
        since = attempts[-1].get("started") or ""
        timeline = []
        for decision in state.get("decisions", []):
            if decision.get("at", "") < since:
                continue
            timeline.append({"at": decision.get("at"), "what": f"wave {decision.get('wave')}",
                             "detail": f"batch {decision.get('batch')}: {decision.get('action')}"
                             + (f" ({'; '.join(decision.get('reasons', []))})" if decision.get("reasons") else "")})
        hosts = state.get("hosts", {})
        callback = events_callback_active()
        # the callback keeps a failed write in the run's store, for this attempt (its correlation id)
        status = run_state.store.log_status(run_state.run_id) if callback else None
        if not callback:
            log = {"callback": False, "complete": False, "reason": "the fleetpatch.rollout.events callback is not enabled: no event log"}
        elif status is not None and not status["complete"] and status["correlation_id"] == run_state.correlation_id:
            log = {"callback": True, "complete": False, "reason": status["reason"]}
        else:
            log = {"callback": True, "complete": True, "reason": None}
        events_path = run_state.paths.events
        events: dict[str, t.Any] = {"path": relative_to(events_path, state_dir)}
        if events_path and callback:
            events.update(file_head(events_path) or {})
        summary_path = run_state.paths.summary
        body = {
            "status": finish.get("status") or state.get("status"),
            "counts": summary.get("counts"),
            "failures": summary.get("failures"),
            "halted": summary.get("halted"),
            "untouched": len(summary.get("untouched") or []),
            "timeline": timeline,
            "hosts": {host: {key: entry.get(key) for key in ("outcome", "at", "wave", "batch", "reason", "version") if entry.get(key) is not None}
                      for host, entry in sorted(hosts.items())},
            "rolled_back": sorted(host for host, entry in hosts.items() if entry.get("outcome") == "rolled_back"),
            "rollback_failed": sorted(host for host, entry in hosts.items() if entry.get("outcome") == "rollback_failed"),
            "events": events,
            "log": log,
            "summary": {"path": relative_to(summary_path, state_dir),
                        "sha256": sha256_file(summary_path) if os.path.exists(summary_path) else None},
        }
        return registry.append("run.finished", body, **common)
