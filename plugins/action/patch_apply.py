# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for fleetpatch.rollout.patch_apply: the rollout's arguments built once per host in Python, and staging
from the controller folded into the one apply execution.

With ``plan_var`` (the role's apply and rollback steps) the module's arguments come from the registered result of
``fleetpatch.rollout.rollout_plan`` on localhost, the no_log artifact URLs (``urls_var``) and this host's own variables,
read once per host: the task templates no expression per argument, and never the whole plan. Explicit arguments of the
task win over the ones built from the plan. Without ``plan_var`` the task's arguments are the module's, as written.

Without ``src`` the module runs as it would without this plugin. With ``src`` (a file on the controller) the artifact
travels over the task's connection (``put_file``: no module, no Python process on the host) into the task's remote
temporary directory, and the module takes it from there as a ``file://`` source, through the same bounded fetch,
digest, size and signature checks as a download, into ``cache/sha256/<digest>``. A host therefore runs one Python
process for staging and applying together, where ``ansible.builtin.copy`` before it ran two (stat, then copy) and the
module a third. A host whose cache already holds a verified copy takes that copy and never reads the transferred one.

Where the execution has a remote tmp dir anyway, the host bytecode cache goes with it as the interpreter's startup hook
(plugin_utils/_host_startup.py): ansible-core's module_utils load compiled, not compiled from the zip on every host.
"""

from __future__ import annotations

import collections.abc as c
import os
import typing as t
import urllib.parse

from ansible import constants as C
from ansible.errors import AnsibleActionFail

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._host_startup import HookedModuleAction

MODULE = "fleetpatch.rollout.patch_apply"
# the play that registers the plan and sets the URLs runs on this host (playbooks/rollout.yml's plan play)
PLAN_HOST = "localhost"
STAGES = ("url", "copy", "prestaged")
# the host's own variables the arguments take (the inventory contract, docs/architecture.md "Host variables")
HOST_VARS = ("fleetpatch_host_root", "fleetpatch_restart_command", "fleetpatch_health_url", "fleet_environment")


class ActionModule(HookedModuleAction):
    # False: the copy stage makes its remote tmp dir itself (run); a url or prestaged apply needs none when the connection
    # pipelines, and True would create (and remove) one per host anyway, two more remote commands per host
    TRANSFERS_FILES = False

    def run(self, tmp: t.Any = None, task_vars: dict[str, t.Any] | None = None) -> dict[str, t.Any]:
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        skipped = _skipped(args.pop("skip_var", None), task_vars)
        if skipped is not None:
            # decided here rather than by a `when` on the role's block: a conditional is compiled by Jinja in every forked
            # worker (no template cache survives the fork), one per host and batch
            result.update(skipped)
            return result
        if "plan_var" in args:
            args = self._from_plan(args, task_vars)
        src = args.pop("src", None)
        if src is None:
            result.update(self._run_module(MODULE, args, task_vars))
            return result
        source = self._source(src, args)
        if self._task.check_mode:
            # check mode changes nothing on the host, so nothing is transferred: the module says what a run would do
            result.update(self._run_module(MODULE, args, task_vars))
            return result
        try:
            tmpdir = self._connection._shell.tmpdir or self._make_tmp_path()  # pylint: disable=protected-access
            remote = self._connection._shell.join_path(tmpdir, "artifact")  # pylint: disable=protected-access
            self._transfer_file(source, remote)
            # read, never run: without become, execute=False needs no remote command (execute=True costs a chmod per
            # host); with an unprivileged become the artifact still gets read access for the become user, and the
            # tmp dir its traverse bit from the module's own fixup that follows
            self._fixup_perms2((remote,), execute=False)
            args["artifact_url"] = "file://" + urllib.parse.quote(remote)
            result.update(self._run_module(MODULE, args, task_vars))
        finally:
            self._remove_tmp_path(self._connection._shell.tmpdir)  # pylint: disable=protected-access
        return result

    def _from_plan(self, args: dict[str, t.Any], task_vars: dict[str, t.Any]) -> dict[str, t.Any]:
        """The module's arguments from the plan on localhost, the no_log URLs and this host's variables; explicit ones win."""
        plan_var, urls_var, stage, stage_var = args.pop("plan_var"), args.pop("urls_var", None), args.pop("stage", None), args.pop("stage_var", None)
        for name, value in (("plan_var", plan_var), ("urls_var", urls_var)):
            if value is not None and (not isinstance(value, str) or not value):
                raise AnsibleActionFail(f"{name} must be the name of a variable of {PLAN_HOST}")
        if stage_var is not None and (not isinstance(stage_var, str) or not stage_var):
            raise AnsibleActionFail("stage_var must be the name of a variable of this host")
        if stage is None and stage_var is not None and stage_var in task_vars:
            # the host's variable as the task would have templated it ("{{ rollout_stage }}"): a plain value costs no Jinja
            # compile, which a templated task argument costs in every forked worker
            stage = self._templar.template(task_vars[stage_var])
        stage = stage or "url"
        if stage not in STAGES:
            raise AnsibleActionFail(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
        planner = _planner_vars(task_vars, [name for name in (plan_var, urls_var) if name])
        host = {name: self._templar.template(task_vars[name]) for name in HOST_VARS if name in task_vars}
        built = plan_module_args(planner.get(plan_var), planner.get(urls_var) if urls_var else None, plan_var=plan_var, host=host, stage=stage,
                                 state=args.get("state", "present"))
        built.update(args)
        return built

    @staticmethod
    def _source(src: t.Any, args: t.Mapping[str, t.Any]) -> str:
        """The controller file to stage: an absolute path to a regular file, and the only source of the artifact."""
        if not isinstance(src, str) or not src or "\x00" in src:
            raise AnsibleActionFail("src must be the path of the artifact on the controller")
        if args.get("artifact_url"):
            raise AnsibleActionFail("parameters are mutually exclusive: src|artifact_url")
        if args.get("state", "present") != "present":
            raise AnsibleActionFail("src is only used with state=present")
        path = os.path.abspath(os.path.expanduser(src))
        if not os.path.isfile(path):
            raise AnsibleActionFail(f"src {path} is not a file on the controller")
        return path


def _skipped(skip_var: t.Any, task_vars: t.Mapping[str, t.Any]) -> dict[str, t.Any] | None:
    """The skipped result of a host that skip_var's skip_hosts (this host's registered change_window result) lists, else None."""
    if skip_var is None:
        return None
    if not isinstance(skip_var, str) or not skip_var:
        raise AnsibleActionFail("skip_var must be the name of a variable of this host")
    window = task_vars.get(skip_var)
    skip_hosts = window.get("skip_hosts") if isinstance(window, c.Mapping) else None
    if skip_hosts is None:
        raise AnsibleActionFail(f"{skip_var} is not the registered result of fleetpatch.rollout.change_window (no skip_hosts)")
    if task_vars.get("inventory_hostname") not in skip_hosts:
        return None
    return {"changed": False, "skipped": True, "skip_reason": f"this attempt skips the host ({skip_var}.skip_hosts)"}


def _planner_vars(task_vars: t.Mapping[str, t.Any], names: t.Sequence[str]) -> t.Mapping[str, t.Any]:
    """The named variables of the plan host as stored, without computing its whole variable set when they can be read directly.

    A registered result and a set_fact value of localhost live in the variable manager's non-persistent fact cache, and only
    extra variables (and magic ones, which no such name can be) take precedence over it, so with the default hash behaviour
    (replace) they are exactly what hostvars.raw_get('localhost') holds for them. raw_get computes every variable of the host
    (inventory and group variables, vars plugins, magic variables): about 1.9 ms of CPU in a freshly forked worker, the
    read here 0.15 ms, once per host and batch. Any other case (the names not all there, another ansible-core, merged
    hashes) takes raw_get.
    """
    hostvars = task_vars.get("hostvars")
    manager = getattr(hostvars, "_variable_manager", None)
    facts = getattr(manager, "_nonpersistent_fact_cache", None)
    if isinstance(facts, c.Mapping) and C.DEFAULT_HASH_BEHAVIOUR == "replace":
        stored = facts.get(PLAN_HOST)
        extra = getattr(manager, "extra_vars", None)
        if isinstance(stored, c.Mapping) and isinstance(extra, c.Mapping) and all(name in stored or name in extra for name in names):
            return {name: extra[name] if name in extra else stored[name] for name in names}
    return _raw_host_vars(task_vars, PLAN_HOST)


def _raw_host_vars(task_vars: t.Mapping[str, t.Any], host: str) -> t.Mapping[str, t.Any]:
    """One host's variables, computed once and not templated: a registered result and a set_fact value are data already,
    and templating them would walk the whole plan (ansible-core recomputes a host's variables at every hostvars[host])."""
    hostvars = task_vars.get("hostvars") or {}
    found = hostvars.raw_get(host) if hasattr(hostvars, "raw_get") else hostvars.get(host)
    return found if isinstance(found, c.Mapping) else {}


def plan_module_args(planned: t.Any, urls: t.Any, *, plan_var: str, host: t.Mapping[str, t.Any], stage: str, state: str) -> dict[str, t.Any]:
    """patch_apply's arguments for one host of the rollout, exactly what the role's apply (or rollback) task wrote in Jinja.

    planned is the registered result of rollout_plan (its URLs masked); urls the raw ones ({url, delta_url}) or None;
    host the host's variables (HOST_VARS, templated) that it defines.
    """
    try:
        patch = planned["patch"]
        artifact = patch["artifact"]
        args: dict[str, t.Any] = {"service": patch["service"], "version": patch["target_version"], "sha256": artifact["sha256"],
                                  "patch_id": patch["patch_id"]}
        args.update({"state": "rollback"} if state == "rollback" else _apply_args(planned, urls, host=host, stage=stage))
    except (KeyError, TypeError, AttributeError):
        raise AnsibleActionFail(f"{plan_var} on {PLAN_HOST} is not the registered result of fleetpatch.rollout.rollout_plan") from None
    if "fleetpatch_host_root" in host:
        args["root"] = host["fleetpatch_host_root"]
    for option, name in (("restart_command", "fleetpatch_restart_command"), ("health_url", "fleetpatch_health_url")):
        if name in host:
            args[option] = host[name]
    return args


def _apply_args(planned: t.Mapping[str, t.Any], urls: t.Any, *, host: t.Mapping[str, t.Any], stage: str) -> dict[str, t.Any]:
    """The arguments of state=present: the artifact's source for the stage, signature, applicability and transfer bounds."""
    patch, artifacts = planned["patch"], planned["artifacts"]
    artifact = patch["artifact"]
    delta = artifact.get("delta")
    if not isinstance(urls, c.Mapping):
        # no hand-over (the plan play set none): the plan's own URLs, as the Jinja default did
        urls = {"url": artifact.get("url"), "delta_url": delta.get("url") if isinstance(delta, c.Mapping) else None}
    args: dict[str, t.Any] = {}
    if stage == "copy":
        if "path" not in artifact:
            raise AnsibleActionFail("rollout_stage=copy needs artifact.path in the patch manifest (the file on the controller)")
        args["src"] = artifact["path"]
    if stage == "url" and urls.get("url"):
        args["artifact_url"] = urls["url"]
    if "size" in artifact:
        args["artifact_size"] = artifact["size"]
    # verified on the host against the exact cached file, whatever brought it there (copy, url, pre-staging, delta)
    for option, value in (("signature", artifact.get("signature")), ("allowed_signers", artifacts.get("allowed_signers")),
                          ("signer_identity", artifacts.get("signer_identity"))):
        if value:
            args[option] = value
    require = artifacts.get("require_signature")
    args["require_signature"] = require is True or (require == "auto" and host.get("fleet_environment", "") in artifacts["production_environments"])
    args["affected_versions"] = patch.get("affected_versions", [])
    args["allow_downgrade"] = patch.get("allow_downgrade", False)
    # bounded transfer (rollout_policy.artifacts): byte cap without a declared size, deadline, minimum throughput
    args.update({key: artifacts[key] for key in ("max_artifact_bytes", "max_time", "min_throughput", "throughput_window")})
    commands = (planned.get("checks") or {}).get("command")
    if commands:
        # the policy's command checks run in this same execution after the step (no second module execution per host)
        args["command_checks"] = commands
    if isinstance(delta, c.Mapping):
        # a host on the delta's base builds the release from the (pre-staged) delta bundle, else the full artifact
        args["delta"] = {"sha256": delta["sha256"], "base_version": delta["base_version"], "size": delta.get("size"),
                         "url": urls.get("delta_url") if stage == "url" else None, "signature": delta.get("signature")}
    return args
