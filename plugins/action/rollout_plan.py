# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for fleetpatch.rollout.rollout_plan: validate, compile, save, lock. Runs on the controller only."""

from __future__ import annotations

import dataclasses
import json
import os
import typing as t
from collections.abc import Mapping

from ansible.inventory.manager import split_host_pattern
from ansible.template import is_trusted_as_template

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._calendar import CalendarError, iso_z
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._checks import (
    MISSING,
    CheckError,
    host_context,
    overview,
    referenced_vars,
    template_names,
    validate_targets,
)
from ansible_collections.fleetpatch.rollout.plugins.module_utils._inputs import (
    InputError,
    check_command,
    check_name,
    check_path,
    check_strings,
    check_text,
    check_url,
)
from ansible_collections.fleetpatch.rollout.plugins.module_utils._manifest import (
    ManifestError,
    downgrade_text,
    redacted,
    run_id_for,
    validate_patch_manifest,
)
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._plan import (
    PlanError,
    compile_plan,
    plan_json,
    render_plan_text,
)
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._policy import (
    PolicyError,
    classify,
    constraints,
    evaluate_waves,
    host_scopes,
    jsonable,
    load_change_policy,
    merge_rollout,
    schedule_text,
    validate_change,
    validate_override,
)
from ansible_collections.fleetpatch.rollout.plugins.module_utils._trust import TrustError
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._trust_policy import check_plan_signatures, validate_artifacts_policy
from ansible_collections.fleetpatch.rollout.plugins.module_utils._errors import FleetpatchError
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._action import ControllerAction
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._controller import (
    controller_identity,
    decision_clock,
    resolve_state_dir,
)
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._events import correlation_for_attempt, events_callback_active, recorder_problem
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._probes import contexts_for
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._yaml import YamlError, load_file
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._redact import scrub_data, split_redaction
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._registry import ApprovalError, approval_chain
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._run import Run, RunStateError
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._slices import SliceContext, SliceError, join_slices, own_part, slice_context
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._store import (
    BACKEND_VAR,
    DEFAULT_BACKEND,
    LockError,
    RunPaths,
    StoreError,
    iso,
    open_store,
    parse_iso,
    utc_now,
)

ARGUMENT_SPEC = {
    "manifest": {"type": "raw", "required": True},
    "targets": {"type": "list", "elements": "str", "required": True},
    "policy": {"type": "dict", "default": {}},
    "state_dir": {"type": "str"},
    "preview": {"type": "bool", "default": False},
    "break_lock": {"type": "bool", "default": False},
    "lock_ttl": {"type": "int", "default": 1800},
    "retry_quarantined": {"type": "bool", "default": False},
    "replan": {"type": "bool", "default": False},
    "require_approval": {"type": "bool", "default": False},
    "change_policy": {"type": "raw"},
    "override": {"type": "raw"},
    "clock": {"type": "str"},
}
FLEET_VARS = ("fleet_region", "fleet_tenant", "fleet_segment", "fleet_environment")


# characters that can make a hostname more than one host pattern (then Ansible's own split decides)
_PATTERN_CHARS = frozenset(",:[]")


def names_one_host(name: str) -> bool:
    """Whether a play's hosts list that holds this hostname selects that host: Ansible reads it back as this one pattern
    (a comma or a colon outside an address or port splits it, spaces around it are dropped) and neither as an
    exclusion (leading ``!``) nor as an intersection (leading ``&``)."""
    if name[:1] in ("!", "&"):
        return False
    return not (_PATTERN_CHARS.intersection(name) or name != name.strip()) or split_host_pattern(name) == [name]


def template_vars(*documents: t.Any) -> list[str]:
    """The host variable names of every ``${var.<name>}`` placeholder in the strings of documents, sorted."""
    found: set[str] = set()
    pending = list(documents)
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "${" in item:
                try:
                    names = template_names(item, "policy")
                except CheckError:
                    continue  # the checks' own validation names it, where it belongs
                found.update(name[4:] for name in names if name.startswith("var."))
        elif isinstance(item, Mapping):
            pending.extend(item.values())
        elif isinstance(item, (list, tuple)):
            pending.extend(item)
    return sorted(found)


class RolloutPlanError(FleetpatchError):
    """Input that must stop the run before any host is touched."""


class OverrideRefused(FleetpatchError):
    """An emergency override that is incomplete, expired or out of scope; record carries it to the registry."""

    def __init__(self, message: str, record: dict[str, t.Any]) -> None:
        super().__init__(message)
        self.record = record


@dataclasses.dataclass
class Compiled:
    """Everything the plan step validated and compiled, before anything is written."""

    manifest: dict[str, t.Any]
    manifest_path: str
    approval: t.Any
    hosts: dict[str, dict[str, t.Any]]
    edges: list[str]
    plan: dict[str, t.Any]
    plan_text: str
    change: dict[str, t.Any]
    schedule: list[dict[str, t.Any]]
    override: dict[str, t.Any] | None
    artifacts: dict[str, t.Any]
    redaction: dict[str, t.Any]
    # a slice of a sliced job (AWX): the plan is over every slice's hosts, own names this slice's
    slice: SliceContext | None = None
    own: list[str] | None = None


class _HostVariables:
    """One host's variables as ``hostvars[host]`` gives them, each templated only when it may be a template.

    ``hostvars[host][name]`` runs every value through the template engine; a value that is not trusted as a template (what
    the fleet inventory sets from its file: data) or not a string comes back from it unchanged, and the engine per value
    cost more than the whole plan compile at 10,000 hosts. Trusted strings and containers (``defaults`` and group_vars
    may hold templates) are templated as before, in the host's variables.
    """

    def __init__(self, all_vars: t.Any, host: str, templar: t.Any) -> None:
        raw_get = getattr(all_vars, "raw_get", None)  # Ansible's HostVars; a plain mapping of variables in unit tests
        found = (raw_get(host) if raw_get is not None else all_vars[host]) if host in all_vars else None
        self._vars: Mapping[str, t.Any] = found if isinstance(found, Mapping) else {}  # an unknown host: no variables
        self._templar = templar
        self._engine: t.Any = None

    def get(self, name: str, default: t.Any = None) -> t.Any:
        if name not in self._vars:
            return default
        value = self._vars[name]
        if isinstance(value, (int, float, type(None))) or (isinstance(value, str) and not is_trusted_as_template(value)):
            return value
        if self._engine is None:
            self._engine = self._templar.copy_with_new_env(available_variables=self._vars)
        return self._engine.template(value)


class ActionModule(ControllerAction):
    argument_spec = ARGUMENT_SPEC
    errors = (OverrideRefused, RolloutPlanError, ManifestError, PlanError, LockError, ApprovalError, CheckError, PolicyError, CalendarError,
              InputError, YamlError, TrustError, RunStateError, StoreError, SliceError)

    _correlation: tuple[str, str] | None = None
    # CPU seconds this slice spent joining the others (the result's slice.cpu_seconds; bench/slice_bench.py sums them)
    _join_cpu = 0.0

    def _load_document(self, value: t.Any, what: str) -> tuple[t.Any, str]:
        """A mapping given inline, or the YAML/JSON file a path names."""
        if isinstance(value, dict):
            return value, f"{what} <inline>"
        if not isinstance(value, str) or not value:
            raise RolloutPlanError(f"{what} must be a path to a YAML/JSON file or a mapping")
        path = self._path(value, what)
        # duplicate keys and alias bombs are errors naming the file; vault-encrypted files still load
        return load_file(path, what=what, loader=self._loader), f"{what} {path}"

    @staticmethod
    def _path(value: str, what: str) -> str:
        path = os.path.abspath(os.path.expanduser(check_text(value, field=what, max_len=4096, error=RolloutPlanError)))
        if not os.path.isfile(path):
            raise RolloutPlanError(f"{what} {path} does not exist")
        return path

    def _change(self, args: dict[str, t.Any], manifest: dict[str, t.Any], manifest_path: str) -> tuple[dict[str, t.Any], dict[str, t.Any]]:
        """Validate the change fields, load the change policy, classify and pick the profile."""
        manifest = validate_change(manifest, source=f"patch manifest {manifest_path}")
        if args["change_policy"]:
            document, source = self._load_document(args["change_policy"], "change policy")
        else:
            document, source = {}, "change policy (built in)"
        policy = load_change_policy(document, source=source)
        return manifest, dict(policy, change=classify(manifest, policy))

    def _override(self, args: dict[str, t.Any], manifest: dict[str, t.Any], policy: dict[str, t.Any], targets: list[str],
                  now: t.Any) -> dict[str, t.Any] | None:
        if not args["override"]:
            return None
        data, source = self._load_document(args["override"], "override")
        data = data.get("override", data) if isinstance(data, dict) else data
        try:
            return validate_override(data, manifest=manifest, profile=policy["change"]["profile"], targets=targets, now=now,
                                     rules=policy["override"])
        except PolicyError as exc:
            # refused, and recorded as refused: the role writes this to the patch registry before it stops
            raise OverrideRefused(str(exc), {"status": "refused", "patch_id": manifest["patch_id"], "reason": str(exc), "source": source, "at": iso_z(now),
                                             "override": jsonable(data) if isinstance(data, dict) else str(data),
                                             "correlation_id": (self._correlation or (None,))[0]}) from None

    def _load_manifest(self, manifest: t.Any) -> tuple[dict[str, t.Any], str]:
        if isinstance(manifest, dict):
            return validate_patch_manifest(manifest), "<inline>"
        if not isinstance(manifest, str) or not manifest:
            raise RolloutPlanError("manifest must be a path to a patch manifest file or a mapping")
        path = self._path(manifest, "patch manifest")
        data = load_file(path, what="patch manifest", loader=self._loader)
        return validate_patch_manifest(data, source=f"patch manifest {path}"), path

    def _collect_hosts(self, targets: list[str], task_vars: dict[str, t.Any], *,
                       check_names: t.Collection[str] = ()) -> tuple[dict[str, dict[str, t.Any]], list[str]]:
        """Each node's planning attributes (checked) and the edges; the variables check_names of each node are kept in
        self._check_vars, so that rendering the checks' targets needs no second pass over the hosts' variables."""
        hosts: dict[str, dict[str, t.Any]] = {}
        edges: list[str] = []
        all_vars = task_vars.get("hostvars", {})
        self._check_vars = check_vars = {}
        for host in targets:
            # every variable of the host computed once (Ansible's hostvars[host] computes them anew on every lookup)
            variables = _HostVariables(all_vars, host, self._templar)
            if variables.get("fleet_role", "node") == "edge":
                edges.append(host)
                continue
            attributes = {name: variables.get(name) for name in FLEET_VARS}
            hosts[host] = {name: value for name, value in attributes.items() if value is not None}
            self._check_host_vars(host, variables, hosts[host])
            if check_names:
                check_vars[host] = {name: variables.get(name, MISSING) for name in check_names}
        return hosts, edges

    def _check_contexts(self, hosts: list[str], checks: list[dict[str, t.Any]], task_vars: dict[str, t.Any],
                        names: dict[str, t.Any]) -> dict[str, dict[str, t.Any]]:
        """Template names per host for the checks: from the variables _collect_hosts kept when it kept every one the
        checks read, else from hostvars (a second pass: Ansible computes all of a host's variables per lookup)."""
        wanted = referenced_vars(checks)
        # nothing kept (hosts collected another way): the second pass
        kept: dict[str, dict[str, t.Any]] = getattr(self, "_check_vars", {})
        if all(host in kept for host in hosts) and all(name in kept[host] for host in hosts[:1] for name in wanted):
            return {host: host_context(host, {name: kept[host][name] for name in wanted}, names) for host in hosts}
        return contexts_for(hosts, checks, task_vars, names)

    @staticmethod
    def _check_host_vars(host: str, variables: _HostVariables, attributes: dict[str, t.Any]) -> None:
        """Every host variable the plan and the apply step use, checked before any host is touched: a 1 MB region would be
        copied into every event, a health URL with a space fails its gate only after the patch is installed."""
        where = f"host {host!r}"
        for name, value in attributes.items():
            # empty or missing: _plan names the variable the policy needs
            if value != "":
                attributes[name] = check_name(value, field=f"variable {name!r}", where=where)
        root = variables.get("fleetpatch_host_root")
        if not root:
            raise RolloutPlanError(f"host {host!r}: variable 'fleetpatch_host_root' is missing")
        check_path(root, field="variable 'fleetpatch_host_root'", where=where)
        health_url = variables.get("fleetpatch_health_url")
        if health_url is not None:
            check_url(health_url, field="variable 'fleetpatch_health_url'", where=where, schemes=("http", "https"))
        command = variables.get("fleetpatch_restart_command")
        if command is not None:
            check_command(command, field="variable 'fleetpatch_restart_command'", where=where)

    def _failure(self, exc: Exception) -> dict[str, t.Any]:
        failure = super()._failure(exc)
        if isinstance(exc, OverrideRefused):
            # roles/rollout/tasks/plan.yml records the refusal in the patch registry from this key
            failure["override_refused"] = exc.record
        if self._correlation is not None:
            # the event callback adopts the attempt's correlation id from this result, failed or not
            failure["fleetpatch_correlation"] = {"id": self._correlation[0], "source": self._correlation[1]}
        return failure

    def _act(self, args: dict[str, t.Any], task_vars: dict[str, t.Any]) -> dict[str, t.Any]:
        # One correlation id per attempt, chosen here (explicit inputs by the callback's rules, else new), stored in the
        # attempt and returned: the callback, the registry and the checks take it from the run, not from the environment.
        self._correlation = correlation_for_attempt(task_vars)
        self._check_inputs(args)
        state_dir = resolve_state_dir(args["state_dir"])
        preview = bool(args["preview"] or self._task.check_mode)
        # fleetpatch_state_backend: where run state lives (an unknown name stops the run here, before any host is touched)
        backend = task_vars.get(BACKEND_VAR)
        store = open_store(state_dir, backend=backend)
        # a slice of a sliced job plans with the other slices through the store (a preview writes nothing: it plans its own hosts)
        compiled = self._compile(args, task_vars, store=None if preview else store)
        run_id = run_id_for(compiled.manifest["patch_id"])
        paths = RunPaths(state_dir, run_id)
        common = self._common(compiled, run_id=run_id, state_dir=state_dir, paths=paths, preview=preview)
        common["state_backend"] = backend or DEFAULT_BACKEND
        previous = Run.load(state_dir=state_dir, run_id=run_id, backend=backend)
        common["skip_hosts"] = self._resumable(previous, args, compiled, run_id)
        if preview:
            # a preview writes nothing, so it names no file it would have written
            common.update(written=[], run_dir=None, plan_path=None, events_path=None, summary_path=None)
            return common
        run = previous or Run.open(state_dir=state_dir, run_id=run_id, patch_id=compiled.manifest["patch_id"],
                                   fingerprint=compiled.plan["fingerprint"], backend=backend)
        return self._start(run, args, task_vars, compiled, common)

    def _check_inputs(self, args: dict[str, t.Any]) -> None:
        """What must hold before anything is loaded: an event log (unless nothing is written), targets, bounded strings."""
        # no event log, no rollout: the refusal says how to enable the callback. A preview (or check mode) writes nothing,
        # events included, so it needs no event log.
        if not (args["preview"] or self._task.check_mode) and (events_problem := recorder_problem()) is not None:
            raise RolloutPlanError(events_problem)
        if not args["targets"]:
            raise RolloutPlanError("no target hosts: the targets match no host of the inventory (an inventory source that failed to parse"
                                   " is named in a warning above)")
        for index, target in enumerate(args["targets"]):
            check_text(target, field=f"targets[{index}]", max_len=255, error=RolloutPlanError)
            # the batch play's hosts are these names as a list of host patterns (__rollout_plan_hosts): each must read
            # back as itself, not as several patterns, an exclusion or an intersection
            if not names_one_host(target):
                raise RolloutPlanError(f"targets[{index}]: host {target!r} cannot be named in a play's hosts (a host pattern that is"
                                       " not this one host: a comma, a colon outside an address, a leading '!' or '&', or spaces around it)")
        if args["clock"]:
            check_text(args["clock"], field="clock", max_len=64, error=RolloutPlanError)
        # every string of the rollout policy: bounded, no control characters (its own validators say what each means)
        check_strings(args["policy"], where="rollout policy", path="policy", error=RolloutPlanError)

    def _compile(self, args: dict[str, t.Any], task_vars: dict[str, t.Any], *, store: t.Any = None) -> Compiled:
        """Manifest, change policy, approval, hosts, plan, override, schedule and checks: everything validated."""
        manifest, manifest_path = self._load_manifest(args["manifest"])
        manifest, change_policy = self._change(args, manifest, manifest_path)
        # approvers are mandatory change fields: every rollout needs an approval that is not a self-approval
        approval = approval_chain(manifest, require=True)
        now, clock_source = decision_clock(args["clock"])
        # the host variables any check may read (${var.x} anywhere in the policies: a superset of what the checks use)
        hosts, edges = self._collect_hosts(args["targets"], task_vars, check_names=template_vars(args["policy"], change_policy))
        own, ctx = list(hosts), None
        if store is not None:
            ctx = slice_context(task_vars, run_id=run_id_for(manifest["patch_id"]), generation=(self._correlation or ("",))[0])
        if ctx is not None:
            # every slice compiles over the union of the slices' hosts, at one clock: equal inputs, equal plan bytes
            joined = join_slices(store, ctx, hosts=hosts, identity=controller_identity(task_vars))
            hosts, self._join_cpu = joined["hosts"], joined["cpu_seconds"]
            if clock_source == "controller":
                now, clock_source = parse_iso(joined["last_joined"]), "slices joined"
        classified = change_policy["change"]
        # rollout_policy.redaction: validated here, returned as the plan result's redaction for the recorder
        args["policy"], redaction = split_redaction(args["policy"])
        # policy.artifacts (plugin_utils/_trust_policy.py): trusted signers and transfer limits, for the hosts, not the plan
        plan_policy = {key: value for key, value in args["policy"].items() if key != "artifacts"}
        artifacts = validate_artifacts_policy(args["policy"].get("artifacts"))
        rollout_policy, overridden = merge_rollout(classified["profile"], plan_policy)
        plan = compile_plan(hosts, rollout_policy, manifest["patch_id"])
        check_plan_signatures(artifacts, manifest, hosts, source=f"patch manifest {manifest_path}")
        override = self._override(args, manifest, change_policy, plan["host_order"], now)
        schedule = evaluate_waves(plan, host_scopes(hosts), change_policy["calendar"], now, constraints(classified["profile"], override))
        change = self._change_record(classified, change_policy, overridden=overridden, override=override, now=now, clock_source=clock_source)
        # the change is part of the plan; the schedule is the calendar's answer at this run's clock
        plan["change"] = {key: value for key, value in change.items() if key not in ("clock", "clock_source", "override")}
        plan["schedule"] = {"evaluated_at": iso_z(now), "clock_source": clock_source, "waves": schedule}
        # every check's templates rendered for every target host: a check that cannot run is an error now, not a pass later
        names = {"run_id": run_id_for(manifest["patch_id"]), "patch_id": manifest["patch_id"], "target_version": manifest["target_version"]}
        # (a slice renders its own hosts' checks: the other slices' host variables are theirs)
        mine = set(own)
        rendered = [host for host in plan["host_order"] if host in mine]
        validate_targets(plan["policy"]["checks"], self._check_contexts(rendered, plan["policy"]["checks"], task_vars, names))
        # an allowed downgrade is part of the plan (plan.json, the registry's plan record) and its first line
        plan["downgrade"] = manifest["downgrade"]
        plan_text = downgrade_text(manifest["downgrade"]) + render_plan_text(plan) + schedule_text(change, schedule)
        return Compiled(manifest=manifest, manifest_path=manifest_path, approval=approval, hosts=hosts, edges=edges, plan=plan,
                        plan_text=plan_text, change=change, schedule=schedule, override=override, artifacts=artifacts, redaction=redaction,
                        slice=ctx, own=own if ctx is not None else None)

    @staticmethod
    def _change_record(classified: dict[str, t.Any], change_policy: dict[str, t.Any], *, overridden: list[str], override: dict[str, t.Any] | None,
                       now: t.Any, clock_source: str) -> dict[str, t.Any]:
        """The classified change as the result, the plan and the events show it."""
        profile = classified["profile"]
        return {
            "change_type": classified["change_type"],
            "classification": classified["classification"],
            "severity": classified["severity"],
            "declared_severity": classified["declared_severity"],
            "score": classified["score"],
            "regression_risk": classified["regression_risk"],
            "profile": profile["name"],
            "constraints": {key: profile[key] for key in ("require_window", "avoid_peak", "avoid_releases", "freeze_override")},
            "time_to_patch_seconds": classified["time_to_patch_seconds"],
            "overridden_keys": overridden,
            "policy_source": change_policy["source"],
            "calendar": change_policy["calendar_spec"],
            "override": override,
            "clock": iso_z(now),
            "clock_source": clock_source,
        }

    def _common(self, compiled: Compiled, *, run_id: str, state_dir: str, paths: RunPaths, preview: bool) -> dict[str, t.Any]:
        """The plan's immutable outputs: the role registers them once and hands them to the later actions as data."""
        manifest, plan = compiled.manifest, compiled.plan
        warnings: list[str] = []
        if compiled.edges:
            warnings.append(f"{len(compiled.edges)} edge host(s) excluded from the rollout targets: {', '.join(sorted(compiled.edges))}")
        correlation_id, correlation_source = self._correlation or ("", "")
        return {
            "changed": False,
            "run_id": run_id,
            # URL userinfo masked: this result is printed at -v and recorded; the raw URLs reach patch_apply only through
            # the no_log variable __rollout_artifact_urls (roles/rollout/tasks/plan.yml)
            "patch": scrub_data(redacted(manifest), policy=compiled.redaction),  # secret query parameters too
            "downgrade": manifest["downgrade"],
            "manifest_path": compiled.manifest_path,
            "plan": plan,
            "plan_text": compiled.plan_text,
            "serial": plan["serial"],
            "host_order": plan["host_order"],
            "preview": preview,
            "state_dir": state_dir,
            "run_dir": paths.run_dir,
            "plan_path": paths.plan,
            "events_path": paths.events,
            "summary_path": paths.summary,
            "checks": overview(plan["policy"]["checks"]),
            "change": compiled.change,
            "schedule": compiled.schedule,
            "redaction": compiled.redaction,
            "artifacts": compiled.artifacts,
            "warnings": warnings,
            "correlation_id": correlation_id,
            "fleetpatch_correlation": {"id": correlation_id, "source": correlation_source},
            **self._slice_part(compiled),
        }

    @staticmethod
    def _slice_part(compiled: Compiled) -> dict[str, t.Any]:
        """A slice's part of the plan: its hosts of each global batch (serial, host order); the actions read slice."""
        if compiled.slice is None:
            return {}
        serial, host_order = own_part(compiled.plan, compiled.own or [])
        return {"serial": serial, "host_order": host_order, "slice": dict(compiled.slice.as_result(), hosts=len(host_order))}

    @staticmethod
    def _resumable(previous: Run | None, args: dict[str, t.Any], compiled: Compiled, run_id: str) -> list[str]:
        """Hosts a resumed run keeps out (quarantined before, unless retried); a changed plan resumes only when asked."""
        if previous is None:
            return []
        fingerprint = compiled.plan["fingerprint"]
        if previous.fingerprint != fingerprint and not args["replan"]:
            raise RolloutPlanError(
                f"run {run_id} was started with a different plan (fingerprint {(previous.fingerprint or '?')[:12]},"
                f" now {fingerprint[:12]}): the inventory or policy changed. Re-run with rollout_replan=true to"
                " continue this patch with the new plan"
            )
        if args["retry_quarantined"]:
            return []
        return [host for host in previous.hosts_with_outcome("quarantined") if host in compiled.hosts]

    def _start(self, run: Run, args: dict[str, t.Any], task_vars: dict[str, t.Any], compiled: Compiled,
               common: dict[str, t.Any]) -> dict[str, t.Any]:
        """Lock the hosts, save the plan, start the attempt (its correlation id and skip list live in the run)."""
        plan, paths = compiled.plan, run.paths
        identity = controller_identity(task_vars)
        attached = None
        if compiled.slice is not None:
            # the first slice stores the plan, the others attach by digest; another plan is refused naming both digests. A
            # new launch (resume) of the same plan evaluates the calendar at its own clock: its slices replace the earlier
            # launch's plan with their (equal) bytes before they attach
            stored = run.store.read_plan(run.run_id)
            if stored is not None and stored != plan_json(plan) and json.loads(stored).get("fingerprint") == plan["fingerprint"]:
                run.store.save_plan(run.run_id, plan_json(plan))
            attached = run.store.attach_plan(run.run_id, plan_json(plan))
            run.lock_id, run.sliced = compiled.slice.lock_id, True
        lock = run.acquire_lock(hosts=common["host_order"], owner=identity["owner"], controller=identity["controller"], pid=identity["pid"],
                                ttl_seconds=args["lock_ttl"], break_stale=args["break_lock"])
        common["warnings"].extend(lock["notes"])
        if attached is None:
            run.store.save_plan(run.run_id, plan_json(plan))
        # the run document, outcomes and lock are the store's (fleetpatch_state_backend); plan.json is the operator's copy
        common["written"] = [paths.plan]
        correlation_id, correlation_source = self._correlation or correlation_for_attempt(task_vars)
        resumed = run.stored
        attempt = {"correlation_id": correlation_id, "correlation_source": correlation_source, "started": iso(utc_now()),
                   "owner": identity["owner"], "pid": identity["pid"], "awx_job_id": identity["awx_job_id"], "resumed": resumed,
                   "skip_hosts": list(common["skip_hosts"])}
        number = run.start_attempt(attempt, fingerprint=plan["fingerprint"])
        run.save()
        if not events_callback_active():
            common["warnings"].append("the event callback fleetpatch.rollout.events is not enabled: this run has no event log"
                                      " (callbacks_enabled = fleetpatch.rollout.events in ansible.cfg)")
        self._queue_events(run, compiled, attempt, number=number, identity=identity, lock_notes=lock["notes"], skip_hosts=common["skip_hosts"])
        if attached is not None:
            common["slice"].update(plan="created" if attached["created"] else "attached", cpu_seconds=round(self._join_cpu, 4))
            run.event("slice.joined", status=common["slice"]["plan"],
                      message=f"slice {compiled.slice.number} of {compiled.slice.count}: {len(common['host_order'])} of {plan['fleet_size']}"
                              f" host(s); plan sha256:{attached['digest'][:16]} {common['slice']['plan']}",
                      slice=compiled.slice.number, slices=compiled.slice.count, key=compiled.slice.key, hosts=len(common["host_order"]),
                      plan_digest=attached["digest"])
        # The event callback, the only writer of events.jsonl, records these from the result.
        common["fleetpatch_events"] = run.events()
        common["fleetpatch_run"] = self._announcement(run.run_id, compiled.manifest["patch_id"], paths, paths.state_dir, plan, compiled.hosts)
        common["fleetpatch_run"]["correlation_id"] = correlation_id
        # the callback records a failed log write in this run's store (registry_record reads it there)
        common["fleetpatch_run"]["state_backend"] = common["state_backend"]
        common.update(lock=lock["lock"], resumed=resumed, attempt=number)
        return common

    @staticmethod
    def _queue_events(run: Run, compiled: Compiled, attempt: dict[str, t.Any], *, number: int, identity: dict[str, t.Any],
                      lock_notes: list[str], skip_hosts: list[str]) -> None:
        plan, change, schedule, override = compiled.plan, compiled.change, compiled.schedule, compiled.override
        run.event("run.started", ts=attempt["started"], status="resumed" if attempt["resumed"] else "started",
                  message=f"run {run.run_id} attempt {number} by {identity['owner']}",
                  attempt=number, resumed=attempt["resumed"], owner=identity["owner"],
                  awx_job_id=identity["awx_job_id"], correlation_source=attempt["correlation_source"],
                  lock_notes=lock_notes, approval=compiled.approval)
        run.event("plan.compiled", status="compiled",
                  message=f"{plan['fleet_size']} hosts, {len(plan['waves'])} waves, {len(plan['batches'])} batches,"
                          f" error budget {plan['error_budget']['limit']}",
                  fingerprint=plan["fingerprint"], fleet_size=plan["fleet_size"], waves=len(plan["waves"]),
                  batches=len(plan["batches"]), serial=plan["serial"], error_budget=plan["error_budget"],
                  skip_hosts=skip_hosts)
        fitting = [entry["wave"] for entry in schedule if entry["fits"]]
        run.event("change.classified", status=change["profile"],
                  message=f"{change['change_type']}/{change['classification']}, severity {change['severity'] or '-'},"
                          f" profile {change['profile']}; {len(fitting)} of {len(schedule)} wave(s) fit at {change['clock']}",
                  **{key: value for key, value in change.items() if key != "calendar"}, schedule=schedule)
        if override:
            run.event("override.accepted", status="accepted",
                      message=f"override {override['ticket']} by {override['requested_by']}, approved by"
                              f" {', '.join(override['approvers'])}, breaks {', '.join(override['breaks'])}"
                              f" for {len(override['hosts'])} host(s) until {override['expires']}",
                      override=override)

    @staticmethod
    def _announcement(run_id: str, patch_id: str, paths: RunPaths, state_dir: str, plan: dict[str, t.Any],
                      hosts: dict[str, dict[str, t.Any]]) -> dict[str, t.Any]:
        """What the event callback needs to know about this run: where to write, and each host's wave and attributes."""
        waves = {wave["name"]: wave for wave in plan["waves"]}
        wave_of = {host: plan["waves"][batch["wave"]]["name"] for batch in plan["batches"] for host in batch["hosts"]}
        batch_of = {host: batch["index"] for batch in plan["batches"] for host in batch["hosts"]}
        return {
            "run_id": run_id,
            "patch_id": patch_id,
            "state_dir": state_dir,
            "events_path": paths.events,
            "plan_group": "fleetpatch_plan_hosts",
            "waves": {name: {"index": wave["index"], "hosts": len(wave["hosts"]), "batches": wave["batches"], "response": wave["response"]}
                      for name, wave in waves.items()},
            "hosts": {host: {"wave": wave_of.get(host), "batch": batch_of.get(host),
                             **{name.split("_", 1)[1]: value for name, value in hosts.get(host, {}).items()}}
                      for host in plan["host_order"]},
        }
