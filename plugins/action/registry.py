# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for fleetpatch.rollout.registry: verify, query, export and prune the patch registry."""

from __future__ import annotations

import typing as t

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._action import ControllerAction
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._controller import resolve_state_dir
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._registry import (
    RegistryError,
    STATES,
    export,
    query_hosts,
    query_patches,
    query_timeline,
    open_registry,
    registry_paths,
    retention,
    verify_all,
    verify_export,
)

ARGUMENT_SPEC = {
    "command": {"type": "str", "required": True, "choices": ["verify", "patches", "hosts", "timeline", "export", "retention"]},
    "state_dir": {"type": "str"},
    "registry_path": {"type": "str"},
    "checkpoint_dir": {"type": "str"},
    "export_dir": {"type": "str"},
    "export_file": {"type": "path"},
    "allowed_signers": {"type": "path"},
    "signer_identity": {"type": "str", "default": "fleetpatch"},
    "patch_id": {"type": "str"},
    "state": {"type": "str", "choices": list(STATES)},
    "events_max_age_days": {"type": "float"},
    "exports_max_age_days": {"type": "float"},
    "keep_exports": {"type": "int", "default": 1},
    "dry_run": {"type": "bool", "default": False},
}


class ActionModule(ControllerAction):
    argument_spec = ARGUMENT_SPEC
    errors = (RegistryError, OSError)
    error_prefix = "patch registry: "

    def _failure(self, exc: Exception) -> dict[str, t.Any]:
        # a RegistryError that names the registry file already says "patch registry <path> ..."
        text = str(exc)
        return {"failed": True, "msg": text if text.startswith("patch registry") else f"{self.error_prefix}{text}"}

    def _act(self, args: dict[str, t.Any], task_vars: dict[str, t.Any]) -> dict[str, t.Any]:
        command = args["command"]
        state_dir = resolve_state_dir(args["state_dir"])
        paths = registry_paths(state_dir, registry_path=args["registry_path"], checkpoint_dir=args["checkpoint_dir"], export_dir=args["export_dir"])
        dry_run = bool(args["dry_run"] or self._task.check_mode)
        # where the registry lives: the PostgreSQL run-state store with fleetpatch_state_backend=postgresql, else the SQLite file
        backend = task_vars.get("fleetpatch_state_backend")
        if command == "verify":
            if args["export_file"]:
                report = verify_export(args["export_file"])
            else:
                report = verify_all(state_dir, registry_path=paths["registry"], checkpoint_dir=paths["checkpoints"],
                                    allowed_signers=args["allowed_signers"], identity=args["signer_identity"], backend=backend)
            lines = [f"{finding['severity']}: {finding['kind']} at {finding['where']}: {finding['message']}" for finding in report["findings"]]
            out = {"changed": False, "report": report, "ok": report["ok"], "findings": lines}
            if not report["ok"]:
                out.update(failed=True, msg=f"patch registry verification found {report['tampered']} problem(s): " + "; ".join(lines[:10]))
            else:
                out["msg"] = f"verified {report['head'].get('records', 0)} registry record(s)" + (
                    f" and {len(report.get('event_files', []))} event file(s)" if "event_files" in report else "")
            return out
        if command in ("patches", "hosts", "timeline"):
            registry = open_registry(state_dir, backend=backend, path=paths["registry"], create=False)
            if command == "patches":
                return {"changed": False, "patches": query_patches(registry, state=args["state"])}
            if not args["patch_id"]:
                raise RegistryError(f"command {command} needs patch_id")
            if command == "hosts":
                return {"changed": False, "hosts": query_hosts(registry, args["patch_id"])}
            return {"changed": False, "timeline": query_timeline(registry, args["patch_id"])}
        if command == "export":
            written = export(open_registry(state_dir, backend=backend, path=paths["registry"], create=False), paths["exports"], dry_run=dry_run)
            return {"changed": written["written"], "export": written}
        if args["events_max_age_days"] is None and args["exports_max_age_days"] is None:
            raise RegistryError("retention needs events_max_age_days and/or exports_max_age_days")
        pruned = retention(state_dir, registry_path=paths["registry"], export_dir=paths["exports"],
                           events_max_age_days=args["events_max_age_days"], exports_max_age_days=args["exports_max_age_days"],
                           keep_exports=args["keep_exports"], dry_run=dry_run, backend=backend)
        return {"changed": bool(pruned["removed"]), "retention": pruned}
