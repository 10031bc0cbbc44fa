# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""fleetpatch.rollout.events: a correlation-logged, hash-chained JSONL record of every deployment event."""

from __future__ import annotations

DOCUMENTATION = r"""
name: events
type: notification
short_description: Write every deployment event as a hash-chained JSON line with a correlation id and trace context
version_added: 1.0.0
description:
  - Writes one JSON line per event to a file per rollout run (by default C(<state dir>/runs/<run_id>/events.jsonl),
    the run that M(fleetpatch.rollout.rollout_plan) announces). It records playbook and play start, run start and end, the plan,
    wave start and end, every host task result, every gate decision with its measured values, every budget decision,
    every rollback, the registry records written, and the end of the playbook with the count of every hook.
  - Every line carries a UTC timestamp, the correlation id, a W3C C(traceparent) (one trace per playbook run, one span
    per host task), the run and patch id, wave and batch, host with its region, tenant, segment and environment, task,
    action, status, changed, duration and message. The shape is the JSON Schema C(docs/events.schema.json).
  - Each line starts with the sha256 of the previous line (C(prev)) and a sequence number (C(seq)). Lines are written
    in batches, at every wave boundary and at least every O(flush_events) events or O(flush_seconds) seconds, with
    fsync. A run killed at any moment leaves at most one torn last line; the next run of the same rollout declares it.
  - Results marked C(no_log) are censored; values of secret variables (named in O(secret_vars) or matching
    O(secret_patterns)) are masked wherever they appear; strings longer than O(max_field_chars) are truncated and
    carry the sha256 of the full value.
  - A failed write is a warning, never a failure of the rollout; the events stay queued, and the run's patch registry
    record says that the log is incomplete. At the end of the playbook the log is sealed in the patch registry
    (its last seq and hash), followed by a checkpoint of the registry.
  - Action plugins hand their domain events to this callback in their result (C(fleetpatch_events)); nothing else
    writes the file.
author: fleetpatch developers (@fleetpatch)
requirements:
  - enabled in C(callbacks_enabled) (for example C(callbacks_enabled = fleetpatch.rollout.events) in ansible.cfg, or
    C(ANSIBLE_CALLBACKS_ENABLED=fleetpatch.rollout.events))
options:
  path:
    description:
      - Write the events here instead of the announced run's C(events.jsonl). C({run_id}) and C({correlation_id}) are
        replaced. With this option set, a playbook that runs no rollout is recorded too.
    type: path
    env:
      - name: FLEETPATCH_EVENTS_PATH
    ini:
      - section: callback_fleetpatch_events
        key: path
  correlation_id:
    description:
      - Correlation id of this playbook run. When unset, the extra variable C(fleetpatch_correlation_id) is used, then
        C(awx-workflow-<id>) from the AWX extra variable C(awx_workflow_job_id) (every job and slice of one workflow job
        shares it), else C(awx-job-<id>) from C(awx_job_id) or C(tower_job_id), then C(runner-<ident>) under
        ansible-runner. Under AWX the first C(play.started) event's C(data.awx) names the job, template, workflow job,
        schedule, slice and who launched it. M(fleetpatch.rollout.rollout_plan) applies the same rules to the same inputs (this option
        through its environment variable) and stores the id in the run's attempt.
      - Without any of these, the attempt's id is the one M(fleetpatch.rollout.rollout_plan) generates and returns; the
        callback adopts it from that result, so the events, the run state and the patch registry rows of an attempt
        carry one id. A playbook that plans no rollout gets a new UUID, printed when its log starts.
      - With a rollout, the run's attempt id wins over an id set only in the ini file (which the plan cannot read).
    type: str
    env:
      - name: FLEETPATCH_CORRELATION_ID
    ini:
      - section: callback_fleetpatch_events
        key: correlation_id
  traceparent:
    description:
      - W3C trace context of a caller (C(00-<trace id>-<span id>-<flags>)). The run joins that trace, with the given
        span as parent of the run's span. Without it every playbook run starts a new trace.
    type: str
    env:
      - name: TRACEPARENT
    ini:
      - section: callback_fleetpatch_events
        key: traceparent
  runner_artifact_dir:
    description:
      - Set by ansible-runner (and so by AWX); its last component is the run's ident, used for the correlation id.
    type: str
    env:
      - name: AWX_ISOLATED_DATA_DIR
  secret_vars:
    description: Names of variables whose values are masked wherever they appear (in addition to O(secret_patterns)).
    type: list
    elements: str
    default: []
    env:
      - name: FLEETPATCH_SECRET_VARS
    ini:
      - section: callback_fleetpatch_events
        key: secret_vars
  secret_patterns:
    description:
      - Shell patterns (case-insensitive) of variable names whose values are secret. Values are collected from extra
        vars, play vars, inventory host and group vars, and facts set during the run. Values shorter than 4 characters
        are not masked (a warning names them).
    type: list
    elements: str
    default: ["*password*", "*passwd*", "*passphrase*", "*token*", "*secret*", "*private_key*", "*api_key*", "*credential*"]
    env:
      - name: FLEETPATCH_SECRET_PATTERNS
    ini:
      - section: callback_fleetpatch_events
        key: secret_patterns
  max_field_chars:
    description: Strings longer than this are truncated to their head, their length and the sha256 of the full value.
    type: int
    default: 4096
    env:
      - name: FLEETPATCH_EVENTS_MAX_FIELD_CHARS
    ini:
      - section: callback_fleetpatch_events
        key: max_field_chars
  flush_events:
    description: Write to disk once this many events are queued (at most 100).
    type: int
    default: 100
    env:
      - name: FLEETPATCH_EVENTS_FLUSH_EVENTS
    ini:
      - section: callback_fleetpatch_events
        key: flush_events
  flush_seconds:
    description: Write to disk when the oldest queued event is this old (at most 1.0).
    type: float
    default: 1.0
    env:
      - name: FLEETPATCH_EVENTS_FLUSH_SECONDS
    ini:
      - section: callback_fleetpatch_events
        key: flush_seconds
"""

import os
import typing as t

from ansible import context
from ansible.plugins.callback import CallbackBase
from ansible.release import __version__ as ansible_version

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._events import HOST_ATTRIBUTES, RecorderOptions, RunRecorder
from ansible_collections.fleetpatch.rollout.plugins.plugin_utils._registry import RegistryError, open_registry, write_checkpoint


def _result(result: t.Any) -> dict[str, t.Any]:
    data = getattr(result, "result", None)
    if data is None:
        data = result._result  # pylint: disable=protected-access  # ansible-core < 2.19
    return data if isinstance(data, dict) else dict(data)


def _host(result: t.Any) -> t.Any:
    return getattr(result, "host", None) or result._host  # pylint: disable=protected-access  # ansible-core < 2.19


def _task(result: t.Any) -> t.Any:
    return getattr(result, "task", None) or result._task  # pylint: disable=protected-access  # ansible-core < 2.19


def _action(task: t.Any) -> str:
    return str(getattr(task, "resolved_action", None) or task.action)


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "fleetpatch.rollout.events"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, display: t.Any = None) -> None:
        super().__init__(display=display)
        self.recorder: RunRecorder | None = None

    def set_options(self, task_keys: t.Any = None, var_options: t.Any = None, direct: t.Any = None) -> None:
        super().set_options(task_keys=task_keys, var_options=var_options, direct=direct)
        options = RecorderOptions(
            path=self.get_option("path"),
            correlation_id=self.get_option("correlation_id"),
            traceparent=self.get_option("traceparent"),
            runner_dir=self.get_option("runner_artifact_dir"),
            secret_vars=tuple(self.get_option("secret_vars") or ()),
            secret_patterns=tuple(self.get_option("secret_patterns") or ()),
            max_field_chars=max(256, int(self.get_option("max_field_chars"))),
            flush_events=min(100, max(1, int(self.get_option("flush_events")))),
            flush_seconds=min(1.0, max(0.05, float(self.get_option("flush_seconds")))),
        )
        self.recorder = RunRecorder(options, warn=self._display.warning, say=self._display.display)

    def _record(self) -> RunRecorder:
        if self.recorder is None:
            self.set_options()
        return t.cast(RunRecorder, self.recorder)

    def v2_playbook_on_start(self, playbook: t.Any) -> None:
        path = getattr(playbook, "_file_name", None) or ""
        self._record().playbook_start(playbook=str(path), check_mode=bool(context.CLIARGS.get("check")), ansible_version=ansible_version)

    def v2_playbook_on_play_start(self, play: t.Any) -> None:
        recorder = self._record()
        manager = play.get_variable_manager()
        extra_vars = dict(manager.extra_vars) if manager is not None else {}
        variables: list[dict[str, t.Any]] = [dict(play.vars or {})]
        attributes: dict[str, dict[str, t.Any]] = {}
        inventory = getattr(manager, "_inventory", None)
        if not recorder.played and inventory is not None:
            # Once per playbook run: inventory variables, for secrets and for the fleet attributes of each host.
            for group in inventory.groups.values():
                variables.append(dict(group.vars))
            for name, host in inventory.hosts.items():
                host_vars = dict(host.vars)
                variables.append(host_vars)
                attributes[name] = {attribute: host_vars.get(f"fleet_{attribute}") for attribute in HOST_ATTRIBUTES}
        recorder.play_start(name=play.get_name(), hosts=list(play.hosts or []), extra_vars=extra_vars, serial=bool(play.serial),
                            variables=variables, host_attributes=attributes)

    def v2_runner_on_start(self, host: t.Any, task: t.Any) -> None:
        self._record().host_task_start(host=host.get_name(), task_uuid=task._uuid)  # pylint: disable=protected-access

    def _host_result(self, result: t.Any, status: str, hook: str) -> None:
        task = _task(result)
        self._record().host_task_result(host=_host(result).get_name(), task_uuid=task._uuid,  # pylint: disable=protected-access
                                        task=task.get_name(), action=_action(task), status=status, result=_result(result),
                                        ignore_errors=bool(task.ignore_errors), hook=hook)

    def v2_runner_on_ok(self, result: t.Any) -> None:
        self._host_result(result, "ok", "v2_runner_on_ok")

    def v2_runner_on_failed(self, result: t.Any, ignore_errors: bool = False) -> None:
        self._host_result(result, "failed", "v2_runner_on_failed")

    def v2_runner_on_skipped(self, result: t.Any) -> None:
        self._host_result(result, "skipped", "v2_runner_on_skipped")

    def v2_runner_on_unreachable(self, result: t.Any) -> None:
        self._host_result(result, "unreachable", "v2_runner_on_unreachable")

    def v2_playbook_on_stats(self, stats: t.Any) -> None:
        recorder = self._record()
        summary = {host: stats.summarize(host) for host in sorted(stats.processed)}
        outcome = recorder.playbook_end(stats=summary)
        self._seal(recorder, outcome)

    def _seal(self, recorder: RunRecorder, outcome: dict[str, t.Any]) -> None:
        """Anchor the log's last line in the patch registry, then checkpoint the registry."""
        registry = recorder.registry
        if not registry or not outcome.get("path"):
            if outcome.get("path"):
                self._display.display(f"fleetpatch events: {outcome['lines']} line(s) written to {outcome['path']}")
            return
        state_dir = registry.get("state_dir") or ""
        path = os.path.abspath(outcome["path"])
        rel = os.path.relpath(path, state_dir) if state_dir and not os.path.relpath(path, state_dir).startswith("..") else path
        body = {"events": {"path": rel, "seq": outcome.get("last_seq"), "head": outcome.get("head"), "first_seq": outcome.get("first_seq"),
                           "lines": outcome.get("lines")}, "complete": outcome["complete"], "reason": outcome.get("reason"),
                "hooks": dict(recorder.hooks)}
        try:
            # the run's registry: the SQLite file, or the PostgreSQL run-state store (registry_record says which)
            ledger = open_registry(state_dir, backend=registry.get("backend"), path=registry["path"])
            record = ledger.append("log.sealed", body, patch_id=registry.get("patch_id"), run_id=registry.get("run_id"),
                                   correlation_id=recorder.correlation_id, redactor=recorder.redactor)
            checkpoint = write_checkpoint(ledger, registry["checkpoint_dir"], run_id=registry.get("run_id"), signing_key=registry.get("signing_key"))
        except (RegistryError, OSError) as exc:
            self._display.warning(f"fleetpatch.rollout.events: could not seal the event log in the patch registry: {exc}")
            return
        if checkpoint.get("sign_error"):
            self._display.warning(f"fleetpatch.rollout.events: registry checkpoint {checkpoint['path']} is not signed: {checkpoint['sign_error']}")
        self._display.display(f"fleetpatch events: {outcome['lines']} line(s) written to {path}, sealed as registry record"
                              f" #{record['seq']}; checkpoint {checkpoint['path']}")
