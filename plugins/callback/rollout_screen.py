# Copyright (c) fleetpatch developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""fleetpatch.rollout.rollout_screen: a terminal a person reads, one line per batch and a table per wave."""

from __future__ import annotations

DOCUMENTATION = r"""
name: rollout_screen
type: stdout
short_description: One line per batch of a fleetpatch rollout and a table per wave with the next command to run
version_added: 1.0.0
description:
  - A stdout callback for fleetpatch playbooks. A rollout prints the plan's headline, its waves and gates, then one line
    per batch with the wave and batch numbers, hosts patched / failed / quarantined, the health probe, every gate's
    worst measured value next to its condition, the error budget left and the gate's decision. When a gate stops the
    run, the trigger and the failed hosts follow. At the end a table per wave (hosts patched, failed, quarantined,
    rolled back, untouched, the gate, what to do next) and the commands to resume, roll back and report.
  - Other playbooks (prestage, reconcile, registry, the demo fleet) print the messages of their C(debug) tasks (their
    reports), failures, and a one-line recap.
  - Skipped tasks and task banners are never printed. Failures are always printed, except those a block rescues (the
    rescue says what happened) and the apply step's (the gate's line reports them).
  - With C(-v) or more, every task is printed exactly as the C(ansible.builtin.default) callback prints it.
  - Enable it with C(stdout_callback = fleetpatch.rollout.rollout_screen) in the C([defaults]) section of ansible.cfg,
    or C(ANSIBLE_STDOUT_CALLBACK=fleetpatch.rollout.rollout_screen).
author: fleetpatch developers (@fleetpatch)
extends_documentation_fragment:
  - default_callback
  - result_format_callback
requirements:
  - set as the stdout callback in configuration
options:
  resume_command:
    description:
      - The command printed as "resume" under the final table. Default, the command line of this run.
    type: str
    env:
      - name: FLEETPATCH_SCREEN_RESUME
    ini:
      - section: callback_rollout_screen
        key: resume_command
  report_command:
    description:
      - The command printed as "report" under the final table. Default, C(ansible-playbook -i <inventory>
        playbooks/reconcile.yml -e reconcile_desired_state=<your desired state>).
    type: str
    env:
      - name: FLEETPATCH_SCREEN_REPORT
    ini:
      - section: callback_rollout_screen
        key: report_command
"""

import shlex
import sys
import typing as t

from ansible import constants as C
from ansible import context
from ansible.plugins.callback.default import CallbackModule as DefaultCallback

from ansible_collections.fleetpatch.rollout.plugins.plugin_utils import _screen

COLLECTION = "fleetpatch.rollout."
# the apply step's failures are the gate's business: its batch line names them
GATED_ACTIONS = ("patch_apply", "command_checks")
# the rollout's readiness gate: its staged percent per region is the line to print (the rollout role's debug tasks
# are not printed; the prestage, reconcile and registry playbooks print their reports with debug tasks of their own)
READINESS_ACTION = "prestage_report"


def _short(action: str) -> str:
    for prefix in (COLLECTION, "ansible.builtin.", "ansible.legacy."):
        if action.startswith(prefix):
            return action[len(prefix):]
    return action


def _role_name(task: t.Any) -> str:
    role = getattr(task, "_role", None)
    return role.get_name() if role is not None else ""


def _in_rescued_block(task: t.Any) -> bool:
    """Whether a block above the task has a rescue section and the task sits in that block's main part."""
    child = task
    parent = getattr(task, "_parent", None)
    while parent is not None:
        if getattr(parent, "rescue", None) and child in _flatten(getattr(parent, "block", None) or []):
            return True
        child, parent = parent, getattr(parent, "_parent", None)
    return False


def _flatten(items: t.Sequence[t.Any]) -> list[t.Any]:
    found: list[t.Any] = []
    for item in items:
        found.append(item)
        for part in ("block", "rescue", "always"):
            found += _flatten(getattr(item, part, None) or [])
    return found


class CallbackModule(DefaultCallback):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "fleetpatch.rollout.rollout_screen"

    def __init__(self) -> None:
        super().__init__()
        self._plan: dict[str, t.Any] = {}
        self._run: dict[str, t.Any] = {}
        self._finish: dict[str, t.Any] | None = None
        self._preview = False

    # -- what the default callback prints under -v ------------------------------------------------------------

    def _full(self) -> bool:
        return self._display.verbosity > 0

    def _say(self, text: str, color: str | None = None) -> None:
        self._display.display(text, color=color)

    # -- playbook and plays ------------------------------------------------------------------------------------

    def v2_playbook_on_start(self, playbook: t.Any) -> None:
        if self._full():
            super().v2_playbook_on_start(playbook)

    def v2_playbook_on_play_start(self, play: t.Any) -> None:
        self._play = play
        if self._full():
            super().v2_playbook_on_play_start(play)

    def v2_playbook_on_task_start(self, task: t.Any, is_conditional: bool) -> None:
        if self._full():
            super().v2_playbook_on_task_start(task, is_conditional)

    def v2_playbook_on_handler_task_start(self, task: t.Any) -> None:
        if self._full():
            super().v2_playbook_on_handler_task_start(task)

    def v2_playbook_on_cleanup_task_start(self, task: t.Any) -> None:
        if self._full():
            super().v2_playbook_on_handler_task_start(task)

    def v2_runner_on_start(self, host: t.Any, task: t.Any) -> None:
        if self._full():
            super().v2_runner_on_start(host, task)

    def v2_playbook_on_include(self, included_file: t.Any) -> None:
        if self._full():
            super().v2_playbook_on_include(included_file)

    def v2_playbook_on_no_hosts_matched(self) -> None:
        if self._full():
            super().v2_playbook_on_no_hosts_matched()

    def v2_playbook_on_no_hosts_remaining(self) -> None:
        if self._full():
            super().v2_playbook_on_no_hosts_remaining()

    # -- results -----------------------------------------------------------------------------------------------

    def v2_runner_on_skipped(self, result: t.Any) -> None:
        if self._full():
            super().v2_runner_on_skipped(result)

    def v2_runner_item_on_skipped(self, result: t.Any) -> None:
        if self._full():
            super().v2_runner_item_on_skipped(result)

    def v2_runner_item_on_ok(self, result: t.Any) -> None:
        if self._full():
            super().v2_runner_item_on_ok(result)

    def v2_runner_item_on_failed(self, result: t.Any) -> None:
        if self._full():
            super().v2_runner_item_on_failed(result)

    def v2_on_file_diff(self, result: t.Any) -> None:
        if self._full():
            super().v2_on_file_diff(result)

    def v2_runner_on_ok(self, result: t.Any) -> None:
        if self._full():
            super().v2_runner_on_ok(result)
            return
        self._handle_warnings(result.result)
        action = _short(result.task.action)
        data = result.result
        if action == "rollout_plan":
            self._on_plan(data)
        elif action == "wave_gate":
            for line in _screen.batch_line(data, plan=self._plan):
                self._say(line, C.COLOR_ERROR if data.get("stop") else None)
        elif action == "change_window" and data.get("stop"):
            self._say(f"waiting for the change window: {data.get('msg', '')}", C.COLOR_WARN)
        elif action == "rollout_finish":
            self._finish = dict(data)
        elif action == "debug":
            self._on_debug(result)
        elif action == READINESS_ACTION and data.get("msg") and _role_name(result.task) == COLLECTION + "rollout":
            self._say(f"readiness: {data['msg']}")

    def _on_plan(self, data: t.Mapping[str, t.Any]) -> None:
        self._run = dict(data)
        self._plan = dict(data.get("plan") or {})
        self._preview = bool(data.get("preview") or data.get("check_mode"))
        for line in _screen.plan_lines(data, preview=self._preview):
            self._say(line)

    def _on_debug(self, result: t.Any) -> None:
        if _role_name(result.task) == COLLECTION + "rollout":
            return  # the plan and the outcome: this callback prints them from the actions' results
        message = result.result.get("msg", "")
        for line in message if isinstance(message, list) else str(message).splitlines():
            self._say(f"  {line}")

    def v2_runner_on_failed(self, result: t.Any, ignore_errors: bool = False) -> None:
        if self._full():
            super().v2_runner_on_failed(result, ignore_errors=ignore_errors)
            return
        # warnings yes; the exception (a traceback, or the error the FAILED line below repeats) only under -v
        self._handle_warnings(result.result)
        if ignore_errors or _short(result.task.action) in GATED_ACTIONS or _in_rescued_block(result.task):
            return
        if self._finish is not None and _short(result.task.action) == "fail" and _role_name(result.task) == COLLECTION + "rollout":
            return  # "the rollout did not complete": the status line and the table say how, and the exit code says it too
        message = " ".join(str(result.result.get("msg") or "failed").split())
        self._say(f"FAILED {result.task.get_name()} on {result.host.get_name()}: {message}", C.COLOR_ERROR)

    def v2_runner_on_unreachable(self, result: t.Any) -> None:
        if self._full():
            super().v2_runner_on_unreachable(result)
            return
        if result.task.ignore_unreachable or _short(result.task.action) in GATED_ACTIONS:
            return
        message = " ".join(str(result.result.get("msg") or "unreachable").split())
        self._say(f"UNREACHABLE {result.host.get_name()} ({result.task.get_name()}): {message}", C.COLOR_UNREACHABLE)

    def v2_runner_retry(self, result: t.Any) -> None:
        if self._full():
            super().v2_runner_retry(result)

    # -- the end -------------------------------------------------------------------------------------------------

    def v2_playbook_on_stats(self, stats: t.Any) -> None:
        if self._full():
            super().v2_playbook_on_stats(stats)
            return
        if self._finish is not None and not self._preview:
            lines = _screen.finish_lines(plan=self._plan, finish=self._finish, patch=self._run.get("patch") or {},
                                         resume=self._resume_command(), report=self._report_command(), inventory=self._inventory())
            for line in lines:
                self._say(line)
            return
        if self._plan:
            return  # a preview or a run that stopped before its finish: the lines above said it all
        hosts = sorted(stats.processed)
        failed = [host for host in hosts if stats.summarize(host)["failures"] or stats.summarize(host)["unreachable"]]
        changed = sum(1 for host in hosts if stats.summarize(host)["changed"])
        line = f"done: {len(hosts)} host(s), {changed} changed, {len(failed)} failed"
        self._say(line + (f": {', '.join(failed)}" if failed else ""), C.COLOR_ERROR if failed else None)

    @staticmethod
    def _inventory() -> str:
        sources = context.CLIARGS.get("inventory") or ()
        return ",".join(sources) if sources else "INVENTORY"

    def _resume_command(self) -> str:
        return self.get_option("resume_command") or shlex.join(["ansible-playbook"] + sys.argv[1:])

    def _report_command(self) -> str:
        return self.get_option("report_command") or (
            f"ansible-playbook -i {shlex.quote(self._inventory())} playbooks/reconcile.yml -e reconcile_desired_state=DESIRED.yml")
