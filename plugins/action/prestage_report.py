# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for fleetpatch.rollout.prestage_report: staged percent per region, readiness gate. Controller only."""

from __future__ import annotations

import datetime as _dt
import os
import typing as t

from ansible.errors import AnsibleError

from ansible_collections.fleetpatch.rollout.plugins.module_utils._errors import FleetpatchError
from ansible_collections.fleetpatch.rollout.plugins.module_utils._io import write_json_atomic
from ansible_collections.fleetpatch.rollout.plugins.module_utils._manifest import ManifestError, run_id_for, validate_patch_manifest
from ansible_collections.fleetpatch.rollout.plugins.module_utils._prestage import readiness_report, region_verdicts, render_report
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._action import ControllerAction
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._controller import controller_identity, host_var, resolve_state_dir
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._run import Run
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store import BACKEND_VAR, RunPaths, StoreError, iso, open_store, outcome_entry, utc_now
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
    # the pre-staging run (no run): keep a record of every node's verified copy in the run-state store
    "save_records": {"type": "bool", "default": True},
    # the rollout's readiness gate: lookup answers which hosts hold a record (staged) and which must be checked; the
    # report then counts the hosts of staged as ready without a result of their own
    "lookup": {"type": "bool", "default": False},
    "readiness": {"type": "str", "default": "auto", "choices": ["auto", "host"]},
    "max_age": {"type": "int", "default": 604800},
    "staged": {"type": "dict", "default": {}},
}


class ReadinessError(FleetpatchError, ValueError):
    """The readiness gate was asked for something it cannot answer."""


def record_usable(record: t.Mapping[str, t.Any], patch: t.Mapping[str, t.Any], trust: t.Mapping[str, t.Any]) -> bool:
    """Whether a pre-staging record still says "staged" for this patch: it names the copy the apply takes (the full
    artifact, or the patch's delta bundle) or the target installed, and a signed copy was verified when the rollout's
    policy verifies signatures (a copy staged without allowed_signers is checked on the host)."""
    artifact = patch.get("artifact") or {}
    delta = artifact.get("delta") or {}
    kind = record.get("kind")
    if kind == "installed":
        return record.get("version") == patch.get("target_version")
    if kind == "full":
        signature = artifact.get("signature")
        if record.get("sha256") != artifact.get("sha256"):
            return False
    elif kind == "delta" and delta:
        signature = delta.get("signature")
        if record.get("sha256") != delta.get("sha256"):
            return False
    else:
        return False
    return not (signature and trust.get("allowed_signers")) or record.get("signature_verified") is True


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
    errors = (ManifestError, ReadinessError, StoreError)

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

    def _lookup(self, args: dict[str, t.Any]) -> dict[str, t.Any]:
        """The readiness gate's first step, once on the controller: hosts with a usable pre-staging record for the run's
        artifact (no older than max_age) are staged; the others (all of them with readiness=host) are checked on the host."""
        run = args["run"]
        if run is None:
            raise ReadinessError("lookup needs run: the registered result of fleetpatch.rollout.rollout_plan")
        patch = self._patch(args)
        staged: dict[str, dict[str, t.Any]] = {}
        if args["readiness"] == "auto" and args["max_age"] > 0 and not run.get("preview"):
            since = iso(utc_now() - _dt.timedelta(seconds=args["max_age"]))
            records = open_store(run["state_dir"], backend=run.get("state_backend")).staged_records(patch["artifact"]["sha256"], since=since)
            trust = run.get("artifacts") or {}
            staged = {host: records[host] for host in args["hosts"] if host in records and record_usable(records[host], patch, trust)}
        check = [host for host in args["hosts"] if host not in staged]
        return {"changed": False, "staged": staged, "check_hosts": check,
                "msg": f"{len(staged)} of {len(args['hosts'])} host(s) staged by their pre-staging record; {len(check)} to check on the host"}

    def _act(self, args: dict[str, t.Any], task_vars: dict[str, t.Any]) -> dict[str, t.Any]:
        check_mode = bool(self._task.check_mode)
        if args["lookup"]:
            return self._lookup(args)

        def collect(hosts: list[str]) -> dict[str, dict[str, t.Any]]:
            return {host: {"region": host_var(task_vars, host, "fleet_region"),
                           "result": host_var(task_vars, host, args["result_var"])} for host in hosts}

        nodes = collect(args["hosts"])
        for host, record in args["staged"].items():
            # staged by its pre-staging record: nothing ran on this host, its record stands for the check
            if host in nodes:
                kept = {"installed": record.get("version")} if record.get("kind") == "installed" else \
                    {key: record.get(key) for key in ("sha256", "kind", "size")}
                nodes[host]["result"] = {"ready": True, "staged": kept, "record": True}
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
                      at=now, unstaged=args["unstaged"] if run is not None else None, skip_hosts=skip,
                      from_records=len(set(args["staged"]) & set(nodes)))
        if run is not None:
            paths = RunPaths(run["state_dir"], run["run_id"])
            path = os.path.join(paths.run_dir, "readiness.json")
        else:
            path = os.path.join(resolve_state_dir(args["state_dir"]), "prestage", f"{run_id_for(patch['patch_id'])}.json")
        events: list[dict[str, t.Any]] = []
        records = None
        if not check_mode and not (run or {}).get("preview"):
            if run is None and args["save_records"]:
                records = self._save_records(args, task_vars, nodes, report, patch, now)
            write_json_atomic(path, report)
            if run is not None:
                # the event callback is the event log's only writer
                events = self._record(run, report, skip, now, unstaged=args["unstaged"])
        lines = render_report(report)
        if report["from_records"]:
            lines.insert(1, f"  {report['from_records']} host(s) staged by their pre-staging record (nothing ran on them)")
        result: dict[str, t.Any] = {"changed": False, "report": report, "lines": lines, "skip_hosts": skip, "report_path": path,
                                    "patch": patch, "msg": "; ".join(lines)}
        if records is not None:
            result["records"] = records
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
    def _save_records(args: dict[str, t.Any], task_vars: dict[str, t.Any], nodes: dict[str, dict[str, t.Any]], report: dict[str, t.Any],
                      patch: dict[str, t.Any], now: str) -> dict[str, t.Any]:
        """The pre-staging run keeps, in the run-state store (fleetpatch_state_backend: an AWX job's container keeps no
        file), a record of the verified copy every ready node holds; a node that ran and is not ready loses its record.
        A node that did not run (another slice, --limit) keeps the record it has."""
        job = controller_identity(task_vars)
        records: dict[str, dict[str, t.Any]] = {}
        forget = []
        for host, info in nodes.items():
            result = info["result"]
            if not isinstance(result, t.Mapping):
                continue
            staged = result.get("staged") or {}
            if host in report["not_ready"] or not staged:
                forget.append(host)
                continue
            installed = staged.get("installed")
            records[host] = {
                "artifact_sha256": patch["artifact"]["sha256"], "patch_id": patch.get("patch_id"), "service": patch.get("service"),
                "version": installed or patch.get("target_version"), "kind": "installed" if installed else staged.get("kind"),
                "sha256": None if installed else staged.get("sha256"), "size": None if installed else staged.get("size"),
                "signature_verified": bool(staged.get("signature_verified")), "staged_at": now,
                "job": {"owner": job["owner"], "awx_job_id": job["awx_job_id"]},
            }
        store = open_store(resolve_state_dir(args["state_dir"]), backend=task_vars.get(BACKEND_VAR))
        saved = store.save_staged(patch["artifact"]["sha256"], records, forget=forget)
        return {"saved": saved, "dropped": len(forget), "store": store.describe()}

    @staticmethod
    def _record(run: dict[str, t.Any], report: dict[str, t.Any], skip: list[str], now: str, *, unstaged: str) -> list[dict[str, t.Any]]:
        """Hosts the readiness gate keeps out of the waves are recorded as not_staged (not a failure); the readiness events."""
        stored = Run.load(state_dir=run["state_dir"], run_id=run["run_id"], backend=run.get("state_backend"))
        run_state = stored or Run.open(state_dir=run["state_dir"], run_id=run["run_id"], patch_id=report.get("patch_id") or "", fingerprint="",
                                       backend=run.get("state_backend"))
        if stored is not None and run_state.attempt:
            # the gate reads it: with unstaged=fail a copy missing at apply time fails against the budget, else it is not_staged
            run_state.attempt["unstaged"] = unstaged
            if skip:
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
