# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for fleetpatch.rollout.prestage_report: staged percent per region, readiness gate. Controller only."""

from __future__ import annotations

import os
import typing as t

from ansible.errors import AnsibleError

from ansible_collections.fleetpatch.rollout.plugins.module_utils._io import write_json_atomic
from ansible_collections.fleetpatch.rollout.plugins.module_utils._manifest import ManifestError, run_id_for, validate_patch_manifest
from ansible_collections.fleetpatch.rollout.plugins.module_utils._prestage import readiness_report, region_verdicts, render_report
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._action import ControllerAction
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._controller import host_var, resolve_state_dir
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._run import Run
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store import RunPaths, iso, outcome_entry, utc_now
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._yaml import YamlError, load_file

ARGUMENT_SPEC = {
    "hosts": {"type": "list", "elements": "str", "required": True},
    "edges": {"type": "list", "elements": "str", "default": []},
    "result_var": {"type": "str", "default": "__prestage_result"},
    "patch": {"type": "dict"},
    "patch_manifest": {"type": "str"},
    "state_dir": {"type": "str"},
    "run": {"type": "dict"},
    "unstaged": {"type": "str", "default": "skip", "choices": ["stage", "skip", "fail"]},
    "fail_below": {"type": "float", "default": 0.0},
}


def failed_edge_regions(edges: t.Mapping[str, t.Mapping[str, t.Any]]) -> dict[str, str]:
    """{region: reason} for every region whose edges all failed (a failed or unreachable result; not run: not counted)."""
    by_region: dict[str, list[tuple[str, t.Any]]] = {}
    for host, info in sorted(edges.items()):
        by_region.setdefault(str(info.get("region") or "(none)"), []).append((host, info.get("result")))
    failed = {}
    for region, entries in by_region.items():
        reasons = []
        for host, result in entries:
            if not isinstance(result, t.Mapping) or (result.get("ready") and not result.get("failed") and not result.get("unreachable")):
                break
            why = " ".join(str(result.get("msg") or result.get("reason") or "failed").split())
            reasons.append(f"{host}: {why[:160]}")
        else:
            failed[region] = "; ".join(reasons)
    return failed


class ActionModule(ControllerAction):
    argument_spec = ARGUMENT_SPEC
    argument_constraints = {"mutually_exclusive": [["patch", "patch_manifest"]], "required_one_of": [["patch", "patch_manifest"]]}
    errors = (ManifestError,)

    def _patch(self, args: dict[str, t.Any]) -> dict[str, t.Any]:
        """The patch manifest: given, or loaded from patch_manifest (looked up like the file lookup does)."""
        if args["patch"] is not None:
            return args["patch"]
        try:
            path = self._find_needle("files", args["patch_manifest"])
        except AnsibleError as exc:
            raise ManifestError(f"patch_manifest {args['patch_manifest']}: {exc}") from None
        try:
            data = load_file(path, what="patch manifest", loader=self._loader)  # duplicate keys and alias bombs refused
        except YamlError as exc:
            raise ManifestError(str(exc)) from None
        return validate_patch_manifest(data, source=f"patch manifest {args['patch_manifest']}")

    def _act(self, args: dict[str, t.Any], task_vars: dict[str, t.Any]) -> dict[str, t.Any]:
        check_mode = bool(self._task.check_mode)

        def collect(hosts: list[str]) -> dict[str, dict[str, t.Any]]:
            return {host: {"region": host_var(task_vars, host, "fleet_region"),
                           "result": host_var(task_vars, host, args["result_var"])} for host in hosts}

        nodes = collect(args["hosts"])
        report = readiness_report(nodes)
        edge_failures: dict[str, str] = {}
        if args["edges"]:
            edge_hosts = collect(args["edges"])
            edges = readiness_report(edge_hosts)
            report["edges"] = {"ready": edges["ready"], "hosts": edges["hosts"], "not_ready": edges["not_ready"],
                               "bytes_by_source": edges["bytes_by_source"]}
            edge_failures = failed_edge_regions(edge_hosts)
        report["verdicts"] = region_verdicts(report, nodes, edge_failures)
        patch = self._patch(args)
        run = args["run"]
        now = iso(utc_now())
        # hosts the plan already skips (quarantined earlier) keep their outcome
        already = set((run or {}).get("skip_hosts") or [])
        skip = sorted(set(report["not_ready"]) - already) if run is not None and args["unstaged"] != "fail" else []
        report.update(patch_id=patch.get("patch_id"), service=patch.get("service"), version=patch.get("target_version"),
                      at=now, unstaged=args["unstaged"] if run is not None else None, skip_hosts=skip)
        if run is not None:
            paths = RunPaths(run["state_dir"], run["run_id"])
            path = os.path.join(paths.run_dir, "readiness.json")
        else:
            path = os.path.join(resolve_state_dir(args["state_dir"]), "prestage", f"{run_id_for(patch['patch_id'])}.json")
        events: list[dict[str, t.Any]] = []
        if not check_mode and not (run or {}).get("preview"):
            write_json_atomic(path, report)
            if run is not None:
                # the event callback is the event log's only writer
                events = self._record(run, report, skip, now)
        lines = render_report(report)
        result: dict[str, t.Any] = {"changed": False, "report": report, "lines": lines, "skip_hosts": skip, "report_path": path,
                                    "patch": patch, "msg": "; ".join(lines)}
        if events:
            result["fleetpatch_events"] = events
        failed_regions = {region: verdict for region, verdict in report["verdicts"].items() if verdict["verdict"] == "failed"}
        if run is None and failed_regions:
            # the pre-staging run: a region that cannot be staged is a failure with its reason (the rollout's readiness
            # gate decides with unstaged=skip|stage|fail instead)
            result.update(failed=True, msg="; ".join(verdict["line"] for verdict in failed_regions.values()))
        if report["percent"] < args["fail_below"]:
            result.update(failed=True, msg=f"only {report['percent']}% of the hosts are staged, below fail_below "
                                           f"{args['fail_below']}%: " + "; ".join(lines))
        return result

    @staticmethod
    def _record(run: dict[str, t.Any], report: dict[str, t.Any], skip: list[str], now: str) -> list[dict[str, t.Any]]:
        """Hosts the readiness gate keeps out of the waves are recorded as not_staged (not a failure); the readiness events."""
        stored = Run.load(state_dir=run["state_dir"], run_id=run["run_id"], backend=run.get("state_backend"))
        run_state = stored or Run.open(state_dir=run["state_dir"], run_id=run["run_id"], patch_id=report.get("patch_id") or "", fingerprint="",
                                       backend=run.get("state_backend"))
        if stored is not None and skip:
            run_state.record_outcomes({host: outcome_entry("not_staged", at=now, reason=report["not_ready"][host]) for host in skip})
            # the run's skip list: change_window hands it to the batches, wave_gate and the baseline leave these hosts alone
            run_state.skip(skip)
            run_state.save()
        run_state.event(
            "prestage.readiness",
            ts=now,
            ready=report["ready"],
            hosts=report["hosts"],
            percent=report["percent"],
            regions={region: {"ready": bucket["ready"], "hosts": bucket["hosts"], "percent": bucket["percent"]}
                     for region, bucket in report["regions"].items()},
            unstaged=report["unstaged"],
            skip_hosts=skip,
            not_ready=report["not_ready"],
            verdicts={region: verdict["verdict"] for region, verdict in report.get("verdicts", {}).items()},
        )
        for region, verdict in report.get("verdicts", {}).items():
            if verdict["verdict"] == "staged_from_origin" or (verdict["verdict"] == "failed" and "every edge failed" in verdict["reason"]):
                run_state.event("prestage.origin_fallback", ts=now, region=region, verdict=verdict["verdict"], message=verdict["line"])
        return run_state.events()
