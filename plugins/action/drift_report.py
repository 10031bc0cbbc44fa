# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for fleetpatch.rollout.drift_report: reconcile host facts with the desired state. Controller only."""

from __future__ import annotations

import datetime
import json
import os
import re
import time
import typing as t

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._drift import (
    DRIFT_STATUSES,
    STATUSES,
    DesiredState,
    DriftError,
    Reconciler,
    apply_registry,
    format_time,
    gc_paused,
    host_record,
    parse_desired_state,
    parse_time,
    registry_marks,
    with_slo_targets,
)
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._policy import PolicyError, load_change_policy, slo_targets
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._action import ControllerAction
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._controller import host_var, resolve_state_dir
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._drift_report import (
    FORMATS,
    drift_rows,
    expand_facts_files,
    output_paths,
    read_facts_file,
    registry_views,
    write_facts_file,
    write_reports,
)
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store import BACKEND_VAR, StoreError, open_store
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store_sql import PostgresStore, SqliteStore
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._yaml import YamlError, load_file

ARGUMENT_SPEC = {
    "hosts": {"type": "list", "elements": "str", "default": []},
    "facts_var": {"type": "str", "default": "__reconcile_facts"},
    "facts_files": {"type": "list", "elements": "str", "default": []},
    "save_facts": {"type": "str"},
    "save_facts_to_store": {"type": "str"},
    "facts_from_store": {"type": "str"},
    "desired_state": {"type": "str"},
    "desired": {"type": "dict"},
    "promotion": {"type": "list", "elements": "str"},
    "slo_targets": {"type": "dict", "default": {}},
    "change_policy": {"type": "str"},
    "registry": {"type": "bool", "default": True},
    "registry_path": {"type": "str"},
    "state_dir": {"type": "str"},
    "output_dir": {"type": "str"},
    "formats": {"type": "list", "elements": "str", "default": list(FORMATS), "choices": list(FORMATS)},
    "prometheus_path": {"type": "str"},
    "report": {"type": "bool", "default": True},
    "fail_on_drift": {"type": "bool", "default": False},
    "fail_statuses": {"type": "list", "elements": "str", "default": list(DRIFT_STATUSES), "choices": list(STATUSES[1:])},
    "now": {"type": "str"},
    "title": {"type": "str", "default": "fleetpatch drift report"},
    "html_max_rows": {"type": "int", "default": 2000},
}
# a facts set's name in the run-state store: templated names such as drift-{{ awx_workflow_job_id }} fit
FACTS_SET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
ATTRIBUTE_VARS = {"environment": "fleet_environment", "region": "fleet_region", "tenant": "fleet_tenant", "segment": "fleet_segment"}


class ActionModule(ControllerAction):
    argument_spec = ARGUMENT_SPEC
    errors = (DriftError, StoreError)
    error_prefix = "fleetpatch.rollout.drift_report: "

    def _act(self, args: dict[str, t.Any], task_vars: dict[str, t.Any]) -> dict[str, t.Any]:
        with gc_paused():
            return self._run(args, task_vars)

    def _failure(self, exc: Exception) -> dict[str, t.Any]:
        return {"failed": True, "changed": False, "msg": f"{self.error_prefix}{exc}"}

    def _desired(self, args: dict[str, t.Any]) -> DesiredState:
        data: dict[str, t.Any] = {}
        source = "inline desired state"
        if args["desired_state"]:
            path = os.path.abspath(os.path.expanduser(args["desired_state"]))
            if not os.path.exists(path):
                raise DriftError(f"desired state file {path} does not exist")
            try:
                loaded = load_file(path, what="desired state file", loader=self._loader)  # duplicate keys and alias bombs refused
            except YamlError as exc:
                raise DriftError(str(exc)) from None
            if loaded is not None and not isinstance(loaded, dict):
                raise DriftError(f"desired state file {path} must hold a mapping")
            data = dict(loaded or {})
            source = path
        if args["desired"]:
            data.update(args["desired"])
            source = source if args["desired_state"] else "inline desired state"
        if args["promotion"] is not None:
            data["promotion"] = args["promotion"]
        desired = parse_desired_state(data, source=source)
        if args["change_policy"]:
            # the rollout's change policy: its profiles' time-to-patch targets become the report's SLO targets
            path = os.path.abspath(os.path.expanduser(args["change_policy"]))
            if not os.path.exists(path):
                raise DriftError(f"change policy file {path} does not exist")
            try:
                policy = load_change_policy(load_file(path, what="change policy", loader=self._loader), source=f"change policy {path}")
            except (PolicyError, YamlError) as exc:
                raise DriftError(str(exc)) from None
            desired = with_slo_targets(desired, slo_targets(policy), source=f"change policy {path}")
        return with_slo_targets(desired, args["slo_targets"], source="slo_targets option")

    def _run(self, args: dict[str, t.Any], task_vars: dict[str, t.Any]) -> dict[str, t.Any]:
        check_mode = bool(self._task.check_mode)
        started = time.process_time()
        wall = datetime.datetime.now(datetime.timezone.utc)
        generated_at = wall.strftime("%Y-%m-%dT%H:%M:%SZ")
        now = parse_time(args["now"]) if args["now"] else wall.timestamp()
        if now is None:
            raise DriftError(f"now {args['now']!r} is not an ISO 8601 time")
        state_dir = resolve_state_dir(args["state_dir"])
        output_dir = os.path.abspath(os.path.expanduser(args["output_dir"])) if args["output_dir"] \
            else os.path.join(state_dir, "reports", "drift")
        desired = self._desired(args)
        # every set name checked, and the store opened (an unknown backend refused), before anything is read or written
        store = self._facts_store(args, task_vars, state_dir)
        records = self._run_records(args, task_vars, generated_at)
        saved = self._save_facts(args, task_vars, records, generated_at=generated_at, check_mode=check_mode)
        stored = None
        if store is not None and args["save_facts_to_store"]:
            stored = {"set": args["save_facts_to_store"], "store": store.describe(),
                      "hosts": len(records) if check_mode else store.save_facts_set(args["save_facts_to_store"], records)}
        if not args["report"]:
            done = {"changed": False, "check_mode": check_mode, "facts_file": saved, "hosts": len(records), "paths": {}}
            return {**done, "facts_stored": stored} if stored else done

        reconciler, inputs, warnings = self._reconcile(args, desired, records, now=now, state_dir=state_dir)
        inputs["facts_file_written"] = saved
        inputs["facts_stored"] = stored
        if store is not None and args["facts_from_store"]:
            inputs["facts_from_store"] = self._read_store(store, args["facts_from_store"], reconciler)
        report = reconciler.build()
        paths = output_paths(output_dir, args["formats"], prometheus_path=args["prometheus_path"])
        document = write_reports(report, paths=paths, generated_at=generated_at, inputs=inputs, title=args["title"],
                                 html_max_rows=args["html_max_rows"], write=not check_mode)
        summary = document["summary"]
        sample = [{"host": host, "environment": verdict.environment, "service": verdict.service, "status": verdict.status,
                   "reason": verdict.reason} for host, verdict, *_rest in drift_rows(report, summary["environments"])[:20]]
        out: dict[str, t.Any] = {
            "changed": False,
            "check_mode": check_mode,
            "written": not check_mode,
            "paths": paths,
            "facts_file": saved,
            "fingerprint": document["fingerprint"],
            "now": format_time(now),
            "summary": summary,
            "matrix": document["matrix"],
            "lag": document["lag_summary"],
            "slo": document["slo"]["severities"],
            "compatibility": document["compatibility"],
            "drift_sample": sample,
            "inputs": inputs,
            "cpu_seconds": round(time.process_time() - started, 3),
        }
        if stored:
            out["facts_stored"] = stored
        if warnings:
            out["warnings"] = warnings
        failing = {status: summary["statuses"][status] for status in args["fail_statuses"] if summary["statuses"][status]}
        if args["fail_on_drift"] and failing:
            out["failed"] = True
            out["msg"] = ("drift found: " + ", ".join(f"{count} {status}" for status, count in failing.items())
                          + f" (report: {paths.get('html') or paths.get('json') or output_dir})")
        return out

    @staticmethod
    def _facts_store(args: dict[str, t.Any], task_vars: dict[str, t.Any], state_dir: str) -> SqliteStore | PostgresStore | None:
        """The run-state store (fleetpatch_state_backend) when a facts set is saved or read, after checking the set names."""
        names = [name for name in (args["save_facts_to_store"], args["facts_from_store"]) if name]
        for name in names:
            if not FACTS_SET.fullmatch(name):
                raise DriftError(f"facts set name {name[:60]!r} must be 1-128 letters, digits and . _ : @ - (starting with a letter or digit)")
        if not names:
            return None
        store = open_store(state_dir, backend=task_vars.get(BACKEND_VAR))
        if not isinstance(store, (SqliteStore, PostgresStore)):
            raise DriftError(f"the {task_vars.get(BACKEND_VAR)} state backend keeps no facts sets")
        return store

    @staticmethod
    def _read_store(store: SqliteStore | PostgresStore, name: str, reconciler: Reconciler) -> dict[str, t.Any]:
        """Merge every record of a facts set into the reconciler (the same merge by host as a facts file's lines)."""
        records = store.facts_set(name)
        if not records:
            # an empty report from a misspelled name or a store the slices never reached would read as a clean fleet
            raise DriftError(f"facts set {name!r} holds no record in the {store.describe()} (saved with save_facts_to_store?)")
        before = reconciler.records
        reconciler.add_batch(records)
        return {"set": name, "store": store.describe(), "records": reconciler.records - before}

    @staticmethod
    def _run_records(args: dict[str, t.Any], task_vars: dict[str, t.Any], generated_at: str) -> list[dict[str, t.Any]]:
        """This run's hosts, from the facts each one registered, as plain JSON data: exactly what a saved facts file gives
        back, so that merged and direct reports agree."""
        records = []
        for host in args["hosts"]:
            attrs = {key: host_var(task_vars, host, name) for key, name in ATTRIBUTE_VARS.items()}
            facts = host_var(task_vars, host, args["facts_var"])
            records.append(host_record(host, attrs=attrs, result=facts if isinstance(facts, dict) else None,
                                       collected_at=generated_at))
        return json.loads(json.dumps(records, default=str))

    @staticmethod
    def _save_facts(args: dict[str, t.Any], task_vars: dict[str, t.Any], records: list[dict[str, t.Any]], *, generated_at: str,
                    check_mode: bool) -> str | None:
        """Write this run's facts file when asked (save_facts; not under check mode); its path, or None."""
        if not args["save_facts"]:
            return None
        saved = os.path.abspath(os.path.expanduser(args["save_facts"]))
        if not check_mode:
            write_facts_file(saved, records, run={"generated_at": generated_at, "awx_job_id": task_vars.get("awx_job_id"),
                                                  "slice": task_vars.get("awx_job_slice_number") or task_vars.get("tower_job_slice_number")})
        return saved

    @staticmethod
    def _reconcile(args: dict[str, t.Any], desired: DesiredState, records: list[dict[str, t.Any]], *, now: float,
                   state_dir: str) -> tuple[Reconciler, dict[str, t.Any], list[str]]:
        """The reconciler fed with this run's records, the facts files and what the registry knows; the report's inputs
        and the run's warnings."""
        reconciler = Reconciler(desired, now=now)
        reconciler.add_all(records)
        files_read = [read_facts_file(path, reconciler) for path in expand_facts_files(args["facts_files"])]
        registry_info: dict[str, t.Any] = {"used": False, "path": None, "reason": "disabled (registry=false)"}
        warnings: list[str] = []
        if args["registry"]:
            views, registry_info = registry_views(state_dir, args["registry_path"])
            if views:
                desired, derived = apply_registry(desired, views, reconciler.host_environments())
                registry_info.update(derived)
                reconciler.use_desired(desired)
                # quarantined, unhealthy and not_applicable hosts: what the registry's host rows say beyond the facts
                marks, registry_info["marks"] = registry_marks(views)
                reconciler.use_registry_marks(marks)
        if not desired.environments:
            warnings.append("the desired state names no environment: every host and service is unknown")
        if reconciler.rejected_count:
            warnings.append(f"{reconciler.rejected_count} facts record(s) were skipped, e.g. {reconciler.rejected[0]}")
        inputs = {
            "hosts_from_run": len(records),
            "facts_files": files_read,
            "records_rejected": reconciler.rejected_count,
            "registry": registry_info,
            "desired_state": desired.source,
            "facts_file_written": None,
        }
        return reconciler, inputs, warnings
